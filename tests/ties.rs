//! Rust and Python list some things twice: template names, the manifest's generation
//! defaults and format version (the exporter writes what the runtime reads), and the prompt
//! strings (training must render exactly what the runtime runs). These tests read the Python
//! side and compare, so the two cannot drift apart.

mod common;

use aligner::{GenerationConfig, Template};
use common::*;
use serde_json::Value;

/// Runs `code` in the repo's `.venv` Python with `export` and `train` importable, and parses
/// the JSON it prints.
fn python(code: &str) -> Value {
    let py = root().join(".venv/bin/python");
    assert!(py.is_file(), "{} missing: run `make test`", py.display());
    let o = std::process::Command::new(py)
        .args(["-c", code])
        .env(
            "PYTHONPATH",
            format!("{0}/export:{0}/train", root().display()),
        )
        .output()
        .expect("python runs");
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("the snippet prints JSON")
}

fn names(v: &Value) -> Vec<String> {
    let mut n: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

#[test]
fn template_names_are_the_same_in_the_runtime_the_exporter_and_training() {
    let v = python(
        "import json; from aligner_export.templates import TEMPLATES as E; \
         from aligner_train.templates import TEMPLATES as T; \
         print(json.dumps({'export': list(E), 'train': list(T)}))",
    );
    let mut ours: Vec<String> = Template::ALL.iter().map(|t| t.name().into()).collect();
    ours.sort();
    assert_eq!(names(&v["export"]), ours);
    assert_eq!(names(&v["train"]), ours);
}

#[test]
fn exported_generation_defaults_and_format_version_are_the_runtimes() {
    let v = python(
        "import json; from aligner_export.manifest import generation_defaults, MANIFEST_VERSION; \
         print(json.dumps({'gen': generation_defaults({}), 'version': MANIFEST_VERSION}))",
    );
    assert_eq!(
        v["version"].as_u64(),
        Some(aligner::folder::MANIFEST_FORMAT_VERSION as u64)
    );
    let exported = v["gen"].as_object().unwrap();
    let ours = serde_json::to_value(GenerationConfig::default()).unwrap();
    assert!(!exported.is_empty());
    for (key, value) in exported {
        let mine = &ours[key];
        assert!(
            !mine.is_null(),
            "the exporter writes {key}, which the runtime does not read"
        );
        assert_eq!(
            value.as_f64(),
            mine.as_f64(),
            "{key}: exporter {value}, runtime {mine}"
        );
    }
}

#[test]
fn training_renders_the_runtimes_prompts_character_for_character() {
    let (q, a) = (
        "Why is the sky blue? | {x}",
        "Because\n##Answer: of \"air\" <|im_end|> é",
    );
    let v = python(&format!(
        "import json; from aligner_train.templates import render, chat, TEMPLATES; \
         q, a = json.loads({q:?}), json.loads({a:?}); \
         print(json.dumps({{'render': {{t: render(t, q, a) for t in TEMPLATES}}, \
         'chat': chat('Be brief.', q), 'chat_plain': chat(None, q)}}))",
        q = serde_json::to_string(q).unwrap(),
        a = serde_json::to_string(a).unwrap(),
    ));
    for t in Template::ALL {
        assert_eq!(v["render"][t.name()], t.render(q, a), "{}", t.name());
    }
    let chatml = Template::ChatmlCorrection;
    assert_eq!(v["chat"], chatml.chat(Some("Be brief."), q));
    assert_eq!(v["chat_plain"], chatml.chat(None, q));
}
