//! `render` over the real Tekton examples and bad input: snapshots of what they produce, and
//! the CLI's error behaviour.

use affinity_assistant::render::{self, Format, Source};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tekton/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (the shared fixtures must sit beside the repository)", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 9, "expected the Tekton examples, found {files:?}");
    files
}

fn source(path: &Path) -> Source {
    Source {
        name: path.file_name().unwrap().to_string_lossy().into_owned(),
        text: std::fs::read_to_string(path).unwrap(),
    }
}

#[test]
fn every_tekton_example_renders_and_matches_its_snapshot() {
    for path in fixtures() {
        let report = render::render(&[source(&path)], None).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!report.placeholders().is_empty(), "{}: every example shares a PVC workspace", path.display());
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        insta::assert_snapshot!(format!("{name}.yaml"), report.format(Format::Yaml));
        insta::assert_snapshot!(format!("{name}.table"), report.format(Format::Table));
        let json: serde_json::Value = serde_json::from_str(&report.format(Format::Json)).unwrap();
        assert_eq!(json["kind"], "List");
        assert_eq!(json["items"].as_array().unwrap().len(), report.placeholders().len());
    }
}

#[test]
fn yaml_output_is_apply_able_statefulsets() {
    for path in fixtures() {
        let report = render::render(&[source(&path)], None).unwrap();
        let yaml = report.format(Format::Yaml);
        let docs: Vec<k8s_openapi::api::apps::v1::StatefulSet> = serde_saphyr::from_multiple(&yaml).unwrap();
        assert!(docs.iter().all(|sts| sts.metadata.name.is_some()));
        assert_eq!(docs.len(), report.placeholders().len());
    }
}

#[test]
fn the_projects_own_examples_render() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if path.extension().is_some_and(|x| x == "yaml") && !file.contains("feature-flags") {
            let report = render::render(&[source(&path)], None).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            insta::assert_snapshot!(format!("examples-{name}.table"), report.format(Format::Table));
            seen += 1;
        }
    }
    assert!(seen >= 6, "the Tekton, Argo and KFP examples");
}

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_affinity-assistant"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("aa-render-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn cli_renders_the_readme_example() {
    let (ok, out, err) = cli(&["render", "-f", "examples/parallel-tasks.yaml"]);
    assert!(ok, "{err}");
    assert!(out.contains("Placeholders:") && out.contains("pinned to aa-"), "{out}");
    let (ok, out, _) = cli(&["render", "-f", "examples/parallel-tasks.yaml", "-o", "yaml"]);
    assert!(ok && out.contains("kind: StatefulSet"));
}

#[test]
fn cli_errors_name_the_file_and_document_and_exit_non_zero() {
    let bad_type = temp(
        "bad-type.yaml",
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: ok}\n---\napiVersion: tekton.dev/v1\nkind: PipelineRun\nmetadata: {name: r}\nspec:\n  workspaces: [{name: [1]}]\n",
    );
    let (ok, _, err) = cli(&["render", "-f", bad_type.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("bad-type.yaml") && err.contains("document 2") && err.contains("spec.workspaces[0].name"),
        "{err}"
    );

    let not_yaml = temp("not-yaml.yaml", "a: [\n");
    let (ok, _, err) = cli(&["render", "-f", not_yaml.to_str().unwrap()]);
    assert!(
        !ok && err.contains("not-yaml.yaml") && err.contains("document 1") && err.contains("not valid YAML"),
        "{err}"
    );

    let not_object = temp("scalar.yaml", "just a string\n");
    let (ok, _, err) = cli(&["render", "-f", not_object.to_str().unwrap()]);
    assert!(!ok && err.contains("not a Kubernetes object"), "{err}");

    let (ok, _, err) = cli(&["render", "-f", "/nonexistent/file.yaml"]);
    assert!(!ok && err.contains("/nonexistent/file.yaml"), "{err}");
}

#[test]
fn cli_rejects_an_invalid_config_naming_key_and_value() {
    let cfg =
        temp("ff.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: feature-flags}\ndata:\n  mode: sideways\n");
    let (ok, _, err) = cli(&["render", "-f", "examples/parallel-tasks.yaml", "--config", cfg.to_str().unwrap()]);
    assert!(
        !ok && err.contains("\"mode\"") && err.contains("sideways") && err.contains("isolate-pipelinerun"),
        "{err}"
    );
}

#[test]
fn config_changes_what_renders() {
    let cfg = temp(
        "ff-pr.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: feature-flags}\ndata:\n  mode: pipelineruns\n  placeholder-cpu: 25m\n",
    );
    let (ok, out, err) =
        cli(&["render", "-f", "examples/parallel-tasks.yaml", "--config", cfg.to_str().unwrap(), "-o", "yaml"]);
    assert!(ok, "{err}");
    assert!(out.contains("affinity-assistant.dev/mode: pipelineruns") && out.contains("cpu: 25m"), "{out}");
}

#[test]
fn tekton_coschedule_on_makes_render_stand_down() {
    let flags = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tekton/config-feature-flags.yaml");
    let (ok, out, err) = cli(&["render", "-f", "examples/parallel-tasks.yaml", "-f", flags.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("coschedule: workspaces") && out.contains("left to the engine's own affinity assistant"),
        "{out}"
    );
}

#[test]
fn stdin_input_works() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_affinity-assistant"))
        .args(["render", "-f", "-", "-o", "json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/parallel-tasks.yaml"))
                .unwrap()
                .as_slice(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["items"][0]["kind"], "StatefulSet");
}

#[test]
fn the_fixture_shapes_parse_and_input_pods_are_decided() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tekton");
    let sources: Vec<Source> = ["tekton-pipelinerun-status-shapes.yaml", "tekton-task-pod-shape.yaml"]
        .iter()
        .map(|f| source(&dir.join(f)))
        .collect();
    let report = render::render(&sources, None).unwrap();
    let ns = &report.namespaces[0];
    assert_eq!(ns.plan.runs[0].name, "my-pipelinerun");
    assert_eq!(ns.pods.len(), 1, "the Pod document is decided too");
    assert!(
        report.notes.iter().any(|n| n.contains("existing") && n.contains("assumed ReadWriteOnce")),
        "{:?}",
        report.notes
    );
}

#[test]
fn a_pod_input_of_a_rendered_run_is_pinned() {
    let example = source(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/parallel-tasks.yaml"));
    let pod = Source {
        name: "pod.yaml".into(),
        text: r#"
apiVersion: v1
kind: Pod
metadata:
  generateName: build-and-test-1-build-pod-
  namespace: ci
  labels:
    tekton.dev/pipelineRun: build-and-test-1
    tekton.dev/pipelineRunUID: 6f1c2a4e-0000-4000-8000-000000000001
    tekton.dev/pipelineTask: build
spec:
  volumes:
  - name: ws-1bcf2
    persistentVolumeClaim: {claimName: build-cache}
"#
        .into(),
    };
    let report = render::render(&[example, pod], None).unwrap();
    let outcome = render::outcome(&report.namespaces[0].pods[0].decision);
    assert!(outcome.starts_with("pinned to aa-build-cache-"), "{outcome}");
}

#[test]
fn a_claim_named_when_the_pod_is_built_is_read_from_the_pods_given() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/argo-parameter-claim.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    // The Workflow and its PVC without the pods: render cannot know the claim, and says so.
    let workflow_only = text.split("\n---\napiVersion: v1\nkind: Pod").next().unwrap().to_string();
    let report = render::render(&[Source { name: "workflow.yaml".into(), text: workflow_only }], None).unwrap();
    assert!(report.placeholders().is_empty());
    assert!(report.notes.iter().any(|n| n.contains("{{inputs.parameters.pvc}}")), "{:?}", report.notes);
    let task = &report.namespaces[0].tasks[0];
    assert!(render::outcome(&task.decision).contains("named only when the pod is built"), "{task:?}");
    // With the pods Argo built: one placeholder for the claim they mount, both pinned to it.
    let report = render::render(&[source(&path)], None).unwrap();
    let placeholders = report.placeholders();
    assert_eq!(placeholders.len(), 1);
    let name = placeholders[0].metadata.name.clone().unwrap();
    assert_eq!(report.namespaces[0].pods.len(), 2);
    for p in &report.namespaces[0].pods {
        assert_eq!(render::outcome(&p.decision), format!("pinned to {name}"));
    }
    assert!(report.namespaces[0].tasks.is_empty(), "the pods stand for the template's sample pod");
}
