//! The reinstall payload checked against OVHcloud's own schema before it is
//! sent: `dedicated.server.Reinstall` and what it references, extracted
//! from OVH's OpenAPI 3 description (`reinstall-schema.json`, made by
//! `scripts/extract-ovh-reinstall-schema.py`).
//!
//! Hand-written rather than the `jsonschema` crate: the document is
//! OpenAPI 3.0, whose schemas are not JSON Schema (`nullable`, and refs into
//! `#/components/schemas`), and it uses ten keywords (`type`, `properties`,
//! `required`, `additionalProperties`, `items`, `enum`, `allOf`, `$ref`,
//! `format`, `description`). A validator for exactly those is a screen of
//! code, while the crate would bring a regex engine and an HTTP resolver
//! into the build for nothing, and would still need the schema rewritten.
//! A keyword it does not know is an error, so a newer schema cannot be
//! half-checked silently (a test holds the embedded one to that).
//!
//! One deliberate strictness: an object schema with `properties` and no
//! `additionalProperties` is closed. OVH's API refuses unknown
//! customizations (`Client::BadRequest::CustomizationName`), and a typo
//! such as `imageUrl` must stop here, not after a paid reinstall.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// The embedded schema document.
const DOCUMENT: &str = include_str!("reinstall-schema.json");

/// The name of the request body's schema.
pub const REINSTALL: &str = "dedicated.server.Reinstall";

const REF_PREFIX: &str = "#/components/schemas/";

/// Keywords the validator understands; anything else in the schema is an error.
const KNOWN: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "allOf",
    "$ref",
    "nullable",
    "format",
    "description",
    "readOnly",
];

/// One way a value breaks the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Where, as a JSON path: `customizations.httpHeaders.Authorization`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() { "(body)" } else { &self.path };
        write!(f, "{path}: {}", self.message)
    }
}

/// OVH's schemas by name.
pub struct Schemas {
    schemas: BTreeMap<String, Value>,
}

impl Schemas {
    /// The embedded reinstall schemas.
    pub fn reinstall() -> Self {
        let doc: Value = serde_json::from_str(DOCUMENT).expect("reinstall-schema.json is JSON");
        Self::from_map(doc["schemas"].as_object().expect("schemas is an object"))
    }

    fn from_map(map: &serde_json::Map<String, Value>) -> Self {
        Schemas {
            schemas: map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    /// Checks `value` against the schema `name`; every violation, in document order.
    pub fn validate(&self, name: &str, value: &Value) -> Vec<Violation> {
        let mut out = Vec::new();
        match self.schemas.get(name) {
            Some(schema) => self.check(schema, value, "", &mut out),
            None => out.push(Violation {
                path: String::new(),
                message: format!("internal: no schema {name}"),
            }),
        }
        out
    }

    fn check(&self, schema: &Value, value: &Value, path: &str, out: &mut Vec<Violation>) {
        let fail = |out: &mut Vec<Violation>, message: String| {
            out.push(Violation {
                path: path.to_owned(),
                message,
            })
        };
        let Some(obj) = schema.as_object() else {
            fail(out, "internal: a schema that is not an object".into());
            return;
        };
        if let Some(unknown) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            fail(
                out,
                format!("internal: the schema uses `{unknown}`, which kiln's validator does not know"),
            );
            return;
        }
        if value.is_null() && obj.get("nullable") == Some(&Value::Bool(true)) {
            return;
        }
        if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
            match r.strip_prefix(REF_PREFIX).and_then(|n| self.schemas.get(n)) {
                Some(target) => self.check(target, value, path, out),
                None => fail(out, format!("internal: unresolved reference {r}")),
            }
        }
        for part in obj.get("allOf").and_then(Value::as_array).into_iter().flatten() {
            self.check(part, value, path, out);
        }
        if let Some(ty) = obj.get("type").and_then(Value::as_str) {
            if !has_type(value, ty) {
                fail(out, format!("must be {}, got {}", article(ty), describe(value)));
                return;
            }
        }
        if let Some(allowed) = obj.get("enum").and_then(Value::as_array) {
            if !allowed.contains(value) {
                let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
                fail(out, format!("{value} is not one of {}", list.join(", ")));
            }
        }
        if let (Some(items), Some(list)) = (obj.get("items"), value.as_array()) {
            for (i, item) in list.iter().enumerate() {
                self.check(items, item, &format!("{path}[{i}]"), out);
            }
        }
        if let Some(map) = value.as_object() {
            self.check_object(obj, map, path, out);
        }
    }

    fn check_object(
        &self,
        schema: &serde_json::Map<String, Value>,
        map: &serde_json::Map<String, Value>,
        path: &str,
        out: &mut Vec<Violation>,
    ) {
        let join = |key: &str| {
            if path.is_empty() {
                key.to_owned()
            } else {
                format!("{path}.{key}")
            }
        };
        let properties = schema.get("properties").and_then(Value::as_object);
        for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            let key = required.as_str().unwrap_or_default();
            if !map.contains_key(key) {
                out.push(Violation {
                    path: join(key),
                    message: "is required and missing".into(),
                });
            }
        }
        for (key, v) in map {
            if let Some(prop) = properties.and_then(|p| p.get(key)) {
                self.check(prop, v, &join(key), out);
                continue;
            }
            match schema.get("additionalProperties") {
                Some(Value::Bool(true)) => {}
                Some(extra @ Value::Object(_)) => self.check(extra, v, &join(key), out),
                // Closed: see the module comment.
                _ if properties.is_some() || schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    let known: Vec<&str> = properties
                        .into_iter()
                        .flat_map(|p| p.keys())
                        .map(String::as_str)
                        .collect();
                    let hint = known
                        .iter()
                        .map(|k| (strsim::jaro_winkler(&k.to_lowercase(), &key.to_lowercase()), *k))
                        .filter(|(score, _)| *score > 0.8)
                        .max_by(|a, b| a.0.total_cmp(&b.0))
                        .map(|(_, k)| format!("; did you mean `{k}`?"))
                        .unwrap_or_else(|| format!("; known: {}", known.join(", ")));
                    out.push(Violation {
                        path: join(key),
                        message: format!("unknown field{hint}"),
                    });
                }
                _ => {}
            }
        }
    }
}

fn has_type(value: &Value, ty: &str) -> bool {
    match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        _ => false,
    }
}

fn article(ty: &str) -> String {
    match ty {
        "object" | "array" | "integer" => format!("an {ty}"),
        _ => format!("a {ty}"),
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// The schemas reachable from `root` in a full OpenAPI document, as
/// `scripts/extract-ovh-reinstall-schema.py` extracts them.
pub fn extract(openapi: &Value, root: &str) -> BTreeMap<String, Value> {
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x.as_str()) {
                        ("$ref", Some(r)) => out.push(r.trim_start_matches(REF_PREFIX).to_owned()),
                        _ => refs(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let all = &openapi["components"]["schemas"];
    let mut keep = BTreeMap::new();
    let mut todo = vec![root.to_owned()];
    while let Some(name) = todo.pop() {
        if keep.contains_key(&name) {
            continue;
        }
        let schema = all[&name].clone();
        refs(&schema, &mut todo);
        keep.insert(name, schema);
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(body: Value) -> Vec<String> {
        Schemas::reinstall()
            .validate(REINSTALL, &body)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_apis_own_byolinux_example_is_valid() {
        let body = json!({"operatingSystem":"byolinux_64",
            "customizations":{"configDriveUserData":"I2Nsb3VkLWNvbmZpZw==","efiBootloaderPath":"\\efi\\debian\\grubx64.efi",
              "hostname":"mon-tux","httpHeaders":{"Authorization":"Basic bG9naW46cGFzc3dvcmQ="},
              "imageCheckSum":"367f","imageCheckSumType":"sha512",
              "imageURL":"https://example.com/deb11k6.qcow2"},
            "properties":{"essential":"false","role":"webservers"},
            "storage":[{"partitioning":{"disks":4,"layout":[
              {"fileSystem":"ext4","mountPoint":"/boot","raidLevel":1,"size":1024},
              {"extras":{"lv":{"name":"root"}},"fileSystem":"ext4","mountPoint":"/","raidLevel":1,"size":20480},
              {"fileSystem":"swap","mountPoint":"swap","size":2048},
              {"extras":{"zp":{"name":"poule"}},"fileSystem":"zfs","mountPoint":"/data","raidLevel":5,"size":0}]}}]});
        assert_eq!(errors(body), Vec::<String>::new());
    }

    fn violation_cases() -> Vec<(Value, &'static str)> {
        vec![
            (json!({}), "operatingSystem: is required and missing"),
            (
                json!({"operatingSystem": 64}),
                "operatingSystem: must be a string, got the number 64",
            ),
            (
                json!({"operatingSystem": "byolinux_64", "customizations": {"imageUrl": "x"}}),
                "customizations.imageUrl: unknown field; did you mean `imageURL`?",
            ),
            (
                json!({"operatingSystem": "byolinux_64", "customisations": {}}),
                "customisations: unknown field; did you mean `customizations`?",
            ),
            (
                json!({"operatingSystem": "byolinux_64", "customizations": {"imageCheckSumType": "crc32"}}),
                "customizations.imageCheckSumType: \"crc32\" is not one of \"md5\", \"sha1\", \"sha256\", \"sha512\"",
            ),
            (
                json!({"operatingSystem": "byolinux_64", "customizations": {"httpHeaders": {"Authorization": 1}}}),
                "customizations.httpHeaders.Authorization: must be a string, got the number 1",
            ),
            (
                json!({"operatingSystem": "b", "storage": [{"partitioning": {"layout": [{"mountPoint": "/", "fileSystem": "ext5"}]}}]}),
                "storage[0].partitioning.layout[0].fileSystem: \"ext5\" is not one of",
            ),
            (
                json!({"operatingSystem": "b", "storage": [{"partitioning": {"layout": [{"fileSystem": "ext4"}]}}]}),
                "storage[0].partitioning.layout[0].mountPoint: is required and missing",
            ),
            (
                json!({"operatingSystem": "b", "storage": [{"partitioning": {"layout": [{"fileSystem": "ext4", "mountPoint": "/", "size": "20G"}]}}]}),
                "storage[0].partitioning.layout[0].size: must be an integer, got the string \"20G\"",
            ),
            (
                json!({"operatingSystem": "b", "storage": {"partitioning": {}}}),
                "storage: must be an array, got an object",
            ),
        ]
    }

    #[test]
    fn violations_name_the_path_and_the_rule() {
        let cases = violation_cases();
        for (body, want) in cases {
            let got = errors(body.clone());
            assert!(got.len() == 1 && got[0].starts_with(want), "{body}: {got:?}");
        }
    }

    /// Bodies valid and invalid in every way the schema can tell.
    fn sample_bodies() -> Vec<Value> {
        let mut bodies = vec![
            json!({"operatingSystem": "byolinux_64"}),
            json!({"operatingSystem": "byolinux_64", "customizations": {"imageURL": "https://x/i.qcow2",
                "imageCheckSum": "ab", "imageCheckSumType": "sha256", "imageType": "qcow2", "language": "fr-fr",
                "postInstallationScriptExtension": "ps1", "httpHeaders": {}}, "properties": {"role": "web"}}),
            json!({"operatingSystem": "byolinux_64", "customizations": {"imageType": "vmdk"}}),
            json!({"operatingSystem": "byolinux_64", "properties": {"essential": false}}),
            json!({"operatingSystem": "b", "storage": [{"diskGroupId": 1, "hardwareRaid": [{"raidLevel": 50, "arrays": 2}]}]}),
            json!({"operatingSystem": "b", "storage": [{"hardwareRaid": [{"raidLevel": 7}]}]}),
            json!({"operatingSystem": "b", "storage": [{"partitioning": {"layout": [{"fileSystem": "zfs", "mountPoint": "/data", "raidLevel": 7, "extras": {"zp": {"name": "p"}}}]}}]}),
            json!({"operatingSystem": "b", "storage": [{"partitioning": {"layout": [{"fileSystem": "ext4", "mountPoint": "/", "raidLevel": 2}]}}]}),
            json!({"operatingSystem": "b", "storage": [{"partitioning": {"layout": [{"fileSystem": "ext4", "mountPoint": "/", "extras": {"lv": {"name": 1}}}]}}]}),
            json!({"operatingSystem": "b", "storage": [{"partitioning": {"schemeName": "default", "disks": 2.5}}]}),
            json!({"operatingSystem": "b", "storage": [{"partitioning": {"layout": [{"fileSystem": "ext4", "mountPoint": "/", "extras": {"md": {}}}]}}]}),
            json!([]),
            json!({"operatingSystem": null}),
        ];
        bodies.extend(violation_cases().into_iter().map(|(b, _)| b));
        bodies
    }

    /// kiln's validator and an independent one (Python's `jsonschema` on
    /// the same schema translated to JSON Schema by
    /// testdata/schema_oracle.py) agree on which bodies are valid.
    #[test]
    fn verdicts_match_pythons_jsonschema() {
        let Some(python) = crate::ovh::api::oracle_python("jsonschema", "PyPI `jsonschema`") else {
            return;
        };
        let dir = env!("CARGO_MANIFEST_DIR");
        let bodies = sample_bodies();
        #[allow(clippy::disallowed_methods)] // the oracle, outside kiln's tool registry
        let mut child = std::process::Command::new(&python)
            .arg(format!("{dir}/src/ovh/api/testdata/schema_oracle.py"))
            .arg(format!("{dir}/src/ovh/api/reinstall-schema.json"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&serde_json::to_vec(&bodies).unwrap())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "schema_oracle.py failed");
        let verdicts: Vec<Vec<String>> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(verdicts.len(), bodies.len());
        let schemas = Schemas::reinstall();
        let (mut valid, mut invalid) = (0, 0);
        for (body, theirs) in bodies.iter().zip(&verdicts) {
            let ours = schemas.validate(REINSTALL, body);
            assert_eq!(
                ours.is_empty(),
                theirs.is_empty(),
                "{body}: kiln {ours:?}, jsonschema {theirs:?}"
            );
            if ours.is_empty() {
                valid += 1
            } else {
                invalid += 1
            }
        }
        assert!(valid >= 3 && invalid >= 10, "{valid} valid, {invalid} invalid");
    }

    #[test]
    fn the_embedded_schema_uses_only_known_keywords() {
        fn walk(v: &Value, in_properties: bool, bad: &mut Vec<String>) {
            if let Value::Object(m) = v {
                for (k, x) in m {
                    if !in_properties && !KNOWN.contains(&k.as_str()) {
                        bad.push(k.clone());
                    }
                    walk(x, k == "properties" && !in_properties, bad);
                }
            } else if let Value::Array(a) = v {
                a.iter().for_each(|x| walk(x, false, bad));
            }
        }
        let mut bad = Vec::new();
        for schema in Schemas::reinstall().schemas.values() {
            walk(schema, false, &mut bad);
        }
        assert!(bad.is_empty(), "{bad:?}");
    }

    /// The embedded subset is what the extraction gives from OVH's full
    /// document (shared/reference/data beside the repository, or
    /// $KILN_OVH_OPENAPI). The document is reference data, not a tool, so
    /// its absence skips this test everywhere (it is a provenance check).
    #[test]
    fn the_embedded_schema_is_ovhs() {
        let path = std::env::var_os("KILN_OVH_OPENAPI")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .ancestors()
                    .map(|d| d.join("shared/reference/data/ovh-dedicated-server-openapi.json"))
                    .find(|p| p.is_file())
            });
        let Some(path) = path.filter(|p| p.is_file()) else {
            eprintln!("skipped: OVH's OpenAPI document not found (set KILN_OVH_OPENAPI)");
            return;
        };
        let full: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let embedded: Value = serde_json::from_str(DOCUMENT).unwrap();
        let want: BTreeMap<String, Value> = serde_json::from_value(embedded["schemas"].clone()).unwrap();
        assert_eq!(
            extract(&full, REINSTALL),
            want,
            "rerun scripts/extract-ovh-reinstall-schema.py"
        );
    }
}
