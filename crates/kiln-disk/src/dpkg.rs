//! Reading dpkg's database (`/var/lib/dpkg/status`) from an image, to list
//! what is installed without running `dpkg-query` in a chroot.

use serde::Serialize;

/// A package dpkg considers installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
}

/// The packages whose `Status:` is `install ok installed`, in file order.
pub fn installed_packages(status: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for stanza in status.split("\n\n") {
        let (mut name, mut version, mut arch, mut installed) = (None, "", "", false);
        for line in stanza.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            if line.starts_with([' ', '\t']) {
                continue; // continuation of a multi-line field
            }
            let value = value.trim();
            match key {
                "Package" => name = Some(value),
                "Version" => version = value,
                "Architecture" => arch = value,
                "Status" => installed = value == "install ok installed",
                _ => {}
            }
        }
        if let (Some(name), true) = (name, installed) {
            out.push(Package {
                name: name.to_owned(),
                version: version.to_owned(),
                arch: arch.to_owned(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_installed() {
        let status = "Package: mdadm\nStatus: install ok installed\nArchitecture: amd64\nVersion: 4.2-5\n\
                      Description: tool\n multi-line: with a colon\n\n\
                      Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n\
                      Package: half\nStatus: install ok half-configured\n\n\
                      Package: libc6\nStatus: install ok installed\nArchitecture: i386\nVersion: 2.36\n";
        let p = installed_packages(status);
        let names: Vec<_> = p
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str(), p.arch.as_str()))
            .collect();
        assert_eq!(names, [("mdadm", "4.2-5", "amd64"), ("libc6", "2.36", "i386")]);
    }
}
