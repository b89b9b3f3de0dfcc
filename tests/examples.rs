//! The files in `examples/` are inputs for `affinity-assistant render -f` and documentation:
//! every one is valid YAML of named Kubernetes objects, and the Argo ones are consistent the way
//! Argo checks them (every volumeMount names a volume the template, the Workflow or its
//! volumeClaimTemplates declare; claim templates are named).
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

fn examples() -> Vec<(String, Vec<Value>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("examples/ exists") {
        let path = entry.expect("a directory entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable");
        let docs: Vec<Value> = serde_saphyr::read::<_, Value>(&mut text.as_bytes())
            .map(|d| d.unwrap_or_else(|e| panic!("{}: {e}", path.display())))
            .filter(|v: &Value| !v.is_null())
            .collect();
        out.push((path.file_name().unwrap().to_string_lossy().into_owned(), docs));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn every_example_is_yaml_of_named_objects() {
    let all = examples();
    for name in ["argo-ci.yaml", "argo-shared-cache.yaml", "argo-workflowtemplate.yaml", "kfp-parallelfor.yaml"] {
        assert!(all.iter().any(|(f, _)| f == name), "examples/{name} is missing");
    }
    for (file, docs) in &all {
        assert!(!docs.is_empty(), "{file}: no objects");
        for d in docs {
            for field in ["apiVersion", "kind"] {
                assert!(d[field].is_string(), "{file}: an object without {field}");
            }
            assert!(d["metadata"]["name"].is_string(), "{file}: a {} without metadata.name", d["kind"]);
        }
    }
}

/// The volume names a template may mount: its own volumes, the Workflow's and its claim
/// templates' (Argo's addVolumeReferences looks in that order).
fn declared(spec: &Value, template: &Value) -> BTreeSet<String> {
    let names = |v: &Value, ptr: &str| -> Vec<String> {
        v.pointer(ptr)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|x| x["name"].as_str().or(x["metadata"]["name"].as_str()).map(String::from))
            .collect()
    };
    let mut out: BTreeSet<String> = names(template, "/volumes").into_iter().collect();
    out.extend(names(spec, "/volumes"));
    out.extend(names(spec, "/volumeClaimTemplates"));
    out
}

#[test]
fn argo_examples_mount_only_declared_volumes_and_name_their_claim_templates() {
    let mut workflows = 0;
    for (file, docs) in examples() {
        for d in docs.iter().filter(|d| d["apiVersion"] == "argoproj.io/v1alpha1") {
            let spec = &d["spec"];
            for t in spec["volumeClaimTemplates"].as_array().into_iter().flatten() {
                assert!(t["metadata"]["name"].is_string(), "{file}: a volumeClaimTemplate without metadata.name");
                let modes = t["spec"]["accessModes"].as_array().cloned().unwrap_or_default();
                assert!(modes.iter().any(|m| m == "ReadWriteOnce"), "{file}: the examples show RWO claims");
            }
            for t in spec["templates"].as_array().into_iter().flatten() {
                let ok = declared(spec, t);
                let containers = ["container", "script"]
                    .iter()
                    .map(|k| &t[*k])
                    .cloned()
                    .chain(t["initContainers"].as_array().cloned().unwrap_or_default());
                for c in containers {
                    for m in c["volumeMounts"].as_array().into_iter().flatten() {
                        let n = m["name"].as_str().unwrap_or_default();
                        assert!(ok.contains(n), "{file}: template {} mounts undeclared volume {n}", t["name"]);
                    }
                }
            }
            if d["kind"] == "Workflow" {
                workflows += 1;
                assert!(d["metadata"]["uid"].is_string(), "{file}: Workflows carry a uid (stable render output)");
                let names_template = spec["templates"].is_array() || spec["workflowTemplateRef"]["name"].is_string();
                assert!(names_template, "{file}: a Workflow without templates or workflowTemplateRef");
            }
        }
    }
    assert!(workflows >= 4);
}
