//! The reinstall itself: check that the server offers BYOLinux, post the
//! body, then follow the task and `install/status` until the install is
//! done or has failed, reporting OVH's own step names as they change.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use super::client::{ApiError, Client};

/// A task of `GET /dedicated/server/{serviceName}/task/{taskId}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub task_id: u64,
    #[serde(default)]
    pub function: Option<String>,
    pub status: String,
    #[serde(default)]
    pub comment: Option<String>,
}

/// One entry of `install/status`'s `progress`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Step {
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InstallStatus {
    #[serde(default)]
    elapsed_time: Option<u64>,
    #[serde(default)]
    progress: Option<Vec<Step>>,
}

/// What the wait reports as it goes.
#[derive(Debug)]
pub enum Progress<'a> {
    /// The task's status changed.
    Task(&'a Task),
    /// Step `index` (1-based) of `total` changed status.
    Step {
        index: usize,
        total: usize,
        step: &'a Step,
        elapsed: Option<u64>,
    },
}

/// How the install ended.
#[derive(Debug)]
pub enum Outcome {
    Installed {
        task: Task,
        steps: Vec<Step>,
        seconds: f64,
    },
    Failed(Failure),
    /// Still running when the wait gave up.
    TimedOut {
        task: Task,
        steps: Vec<Step>,
    },
}

/// A failed install: the task, the step that failed (if OVH says which),
/// and what to do.
#[derive(Debug)]
pub struct Failure {
    pub task: Task,
    /// 1-based index, total, and the step.
    pub step: Option<(usize, usize, Step)>,
    pub advice: Vec<String>,
}

/// Checks that the server lists `byolinux_64` among its compatible
/// templates. A key without the right to ask is not a reason to stop:
/// `Ok(Some(warning))`.
pub fn check_byolinux(client: &Client, service: &str, os: &str) -> Result<Option<String>, ApiError> {
    let path = format!("/dedicated/server/{service}/install/compatibleTemplates");
    match client.call(
        "GET",
        &path,
        None,
        "GET /dedicated/server/*/install/compatibleTemplates",
    ) {
        Ok(v) => {
            let names: Vec<&str> = ["ovh", "personal"]
                .iter()
                .flat_map(|k| v[*k].as_array().into_iter().flatten())
                .filter_map(Value::as_str)
                .collect();
            if names.contains(&os) {
                Ok(None)
            } else {
                Err(ApiError::NotByolinux {
                    call: format!("GET {path}"),
                    service: service.to_owned(),
                    detail: format!(
                        "{os} is not among its compatible templates ({})",
                        if names.is_empty() {
                            "none".to_owned()
                        } else {
                            names.join(", ")
                        }
                    ),
                })
            }
        }
        Err(ApiError::Forbidden { rule, .. }) => Ok(Some(format!(
            "could not check that {service} offers {os}: the consumer key lacks `{rule}`; going on"
        ))),
        Err(e) => Err(e),
    }
}

/// Posts the reinstall; the task it started.
pub fn start(client: &Client, service: &str, body: &Value) -> Result<Task, ApiError> {
    let path = format!("/dedicated/server/{service}/reinstall");
    let v = client.call("POST", &path, Some(body), "POST /dedicated/server/*/reinstall")?;
    serde_json::from_value(v.clone()).map_err(|e| ApiError::Invalid {
        call: format!("POST {path}"),
        detail: format!("expected a task: {e}: {v}"),
    })
}

/// Follows task `task_id` and the install status every `interval` until
/// the install ends or `timeout` passes.
pub fn wait(
    client: &Client,
    service: &str,
    task_id: u64,
    interval: Duration,
    timeout: Duration,
    on: &mut dyn FnMut(Progress<'_>),
) -> Result<Outcome, ApiError> {
    let started = Instant::now();
    let task_path = format!("/dedicated/server/{service}/task/{task_id}");
    let status_path = format!("/dedicated/server/{service}/install/status");
    let mut last_task_status = String::new();
    let mut steps: Vec<Step> = Vec::new();
    loop {
        let v = client.call("GET", &task_path, None, "GET /dedicated/server/*/task/*")?;
        let task: Task = serde_json::from_value(v.clone()).map_err(|e| ApiError::Invalid {
            call: format!("GET {task_path}"),
            detail: format!("expected a task: {e}: {v}"),
        })?;
        if task.status != last_task_status {
            last_task_status = task.status.clone();
            on(Progress::Task(&task));
        }
        // 404 once no install runs (before it starts, after it ends).
        let status = match client.call("GET", &status_path, None, "GET /dedicated/server/*/install/status") {
            Ok(v) => Some(
                serde_json::from_value::<InstallStatus>(v.clone()).map_err(|e| ApiError::Invalid {
                    call: format!("GET {status_path}"),
                    detail: format!("expected an installation status: {e}: {v}"),
                })?,
            ),
            Err(ApiError::UnknownServer { .. }) => None,
            Err(e) => return Err(e),
        };
        if let Some(status) = status {
            let now = status.progress.unwrap_or_default();
            let total = now.len();
            for (i, step) in now.iter().enumerate() {
                if steps.get(i) != Some(step) && step.status != "todo" {
                    on(Progress::Step {
                        index: i + 1,
                        total,
                        step,
                        elapsed: status.elapsed_time,
                    });
                }
            }
            steps = now;
        }
        let failed_step = steps
            .iter()
            .position(|s| s.status == "error")
            .map(|i| (i + 1, steps.len(), steps[i].clone()));
        match task.status.as_str() {
            "done" if failed_step.is_none() => {
                return Ok(Outcome::Installed {
                    task,
                    steps,
                    seconds: started.elapsed().as_secs_f64(),
                })
            }
            "customerError" | "ovhError" | "cancelled" | "done" => {
                return Ok(Outcome::Failed(failure(task, failed_step, &steps)))
            }
            _ if failed_step.is_some() => return Ok(Outcome::Failed(failure(task, failed_step, &steps))),
            _ => {}
        }
        if started.elapsed() >= timeout {
            return Ok(Outcome::TimedOut { task, steps });
        }
        let until = Instant::now() + interval;
        while Instant::now() < until {
            if kiln_exec::interrupted() {
                return Err(ApiError::Interrupted);
            }
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(100)));
        }
    }
}

fn failure(task: Task, failed: Option<(usize, usize, Step)>, steps: &[Step]) -> Failure {
    // Without an erroneous step, the one that was running is the suspect.
    let step = failed.or_else(|| {
        steps
            .iter()
            .position(|s| s.status == "doing")
            .map(|i| (i + 1, steps.len(), steps[i].clone()))
    });
    let advice = advice(&task, step.as_ref().map(|(_, _, s)| s));
    Failure { task, step, advice }
}

/// What to do about a failure, from the step's name and error.
pub fn advice(task: &Task, step: Option<&Step>) -> Vec<String> {
    let text = step
        .map(|s| format!("{} {}", s.comment, s.error.clone().unwrap_or_default()).to_lowercase())
        .unwrap_or_default();
    let mut out = Vec::new();
    if text.contains("byolinux configure") || text.contains("make_image_bootable") || text.contains("configuring boot")
    {
        out.push(
            "At this step OVH's installer runs /root/.ovh/make_image_bootable.sh chrooted in the deployed image, and it failed: \
             `kiln deploy ovh --simulate IMAGE` runs it the same way on this machine and shows its output and log; \
             `kiln check IMAGE --target ovh-byol` checks the script and the rest of the contract."
                .to_owned(),
        );
    } else if ["download", "checksum", "image", "qcow2"]
        .iter()
        .any(|w| text.contains(w))
    {
        out.push(
            "The installer could not fetch or verify the image: imageURL must be reachable from the internet (not only from \
             here), --http-header must carry what the image server asks for, the checksum must be the manifest's, and the \
             image must be a qcow2 smaller than the server's RAM minus 3 GiB (`kiln check IMAGE --target ovh-byol --ram SIZE`)."
                .to_owned(),
        );
    } else if ["partition", "raid", "lvm", "format", "disk", "storage"]
        .iter()
        .any(|w| text.contains(w))
    {
        out.push(
            "The disks could not be laid out as asked: `kiln deploy ovh --simulate IMAGE --storage FILE --disks N` replays \
             the partitioning, RAID and LVM with the same storage JSON."
                .to_owned(),
        );
    }
    if task.status == "ovhError" {
        out.push(
            "OVH marks the task ovhError: the fault is on OVH's side; open a ticket with the task id if it repeats."
                .into(),
        );
    }
    out.push(
        "`kiln deploy ovh --simulate IMAGE` replays OVH's BYOLinux installer locally (partitioning, config drive, image \
         download, rsync, make_image_bootable.sh, first boot) and reproduces most install failures without a paid reinstall."
            .to_owned(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(status: &str) -> Task {
        Task {
            task_id: 1,
            function: None,
            status: status.into(),
            comment: None,
        }
    }

    #[test]
    fn advice_follows_the_failing_step() {
        let step = |c: &str| Step {
            comment: c.into(),
            status: "error".into(),
            error: None,
        };
        let a = advice(
            &task("customerError"),
            Some(&step("Running BYOLinux Configure ( 15 / 17 )")),
        );
        assert!(a[0].contains("make_image_bootable.sh"), "{a:?}");
        let a = advice(&task("customerError"), Some(&step("Downloading image ( 9 / 17 )")));
        assert!(a[0].contains("reachable from the internet"), "{a:?}");
        let a = advice(&task("ovhError"), Some(&step("Setting up partitions")));
        assert!(a[0].contains("--storage FILE"), "{a:?}");
        assert!(a[1].contains("ovhError"), "{a:?}");
        assert!(a.last().unwrap().contains("kiln deploy ovh --simulate IMAGE"), "{a:?}");
    }
}
