//! Model spec parsing and validation: every malformed spec gets an error
//! naming the field, never a panic.

use vfl_nn::spec::{ModelSpec, wide_n_deep};

const GOOD: &str = r#"
name = "tiny"
seed = 3
optimizer = { kind = "adam", learning_rate = 0.01 }

[leader]
dense = [{ prefix = "x", count = 4 }]
layers = [{ units = 8, activation = "relu" }]

[follower]
sparse = [{ name = "city", vocab = 10, dim = 4 }]
layers = [{ units = 4, activation = "relu" }]

[head]
layers = [{ units = 1 }]
loss = "sigmoid_cross_entropy"
"#;

fn err_of(text: &str) -> String {
    ModelSpec::from_toml_str(text, "spec.toml").unwrap_err().to_string()
}

#[test]
fn good_spec_parses_and_derives_shapes() {
    let s = ModelSpec::from_toml_str(GOOD, "spec.toml").unwrap();
    assert_eq!(s.leader.dense_columns(), vec!["x0", "x1", "x2", "x3"]);
    assert_eq!(s.follower.slots()[0].name, "city");
    assert_eq!(s.leader.output_dim(), 8);
    assert_eq!(s.follower.output_dim(), 4);
}

#[test]
fn toml_and_json_give_the_same_fingerprint() {
    let s = ModelSpec::from_toml_str(GOOD, "a.toml").unwrap();
    let json = serde_json::to_string_pretty(&s).unwrap();
    let j = ModelSpec::from_json_str(&json, "a.json").unwrap();
    assert_eq!(s, j);
    assert_eq!(s.fingerprint(), j.fingerprint());
    let mut changed = s.clone();
    changed.seed += 1;
    assert_ne!(s.fingerprint(), changed.fingerprint());
}

#[test]
fn preset_round_trips_through_toml() {
    let w = wide_n_deep();
    let again = ModelSpec::from_toml_str(&w.to_toml(), "roundtrip").unwrap();
    assert_eq!(w, again);
}

#[test]
fn wide_n_deep_preset_has_the_original_shapes() {
    let w = ModelSpec::preset("wide_n_deep").unwrap();
    for t in [&w.leader, &w.follower] {
        let slots = t.slots();
        assert_eq!(slots.len(), 512);
        assert!(slots.iter().all(|s| s.vocab == 101 && s.dim == 16));
        assert_eq!(slots[511].name, "x_511");
        assert_eq!(t.input_dim(), 8192);
    }
    assert_eq!(w.follower.output_dim(), 64);
    assert_eq!(
        w.leader.layers.iter().map(|l| l.units).collect::<Vec<_>>(),
        vec![256, 64]
    );
    assert_eq!(w.head.layers.len(), 1);
    assert!(!w.head.layers[0].bias);
    assert_eq!(w.optimizer.learning_rate(), 0.1);
}

#[test]
fn unknown_top_level_field_is_named() {
    let e = err_of(&format!("{GOOD}\nlearning_rate = 0.1\n"));
    assert!(e.contains("learning_rate") && e.contains("spec.toml"), "{e}");
}

#[test]
fn unknown_nested_field_is_named() {
    let e = err_of(&GOOD.replace("units = 8,", "units = 8, dropout = 0.5,"));
    assert!(e.contains("dropout"), "{e}");
}

#[test]
fn zero_units_is_named() {
    let e = err_of(&GOOD.replace("units = 8", "units = 0"));
    assert!(e.contains("leader.layers[0].units"), "{e}");
}

#[test]
fn zero_dim_is_named() {
    let e = err_of(&GOOD.replace("dim = 4", "dim = 0"));
    assert!(e.contains("follower.sparse[0].dim"), "{e}");
}

#[test]
fn zero_vocab_is_named() {
    let e = err_of(&GOOD.replace("vocab = 10", "vocab = 0"));
    assert!(e.contains("follower.sparse[0].vocab"), "{e}");
}

#[test]
fn mismatched_concat_size_is_named() {
    let e = err_of(&GOOD.replace("loss = ", "input_dim = 11\nloss = "));
    assert!(
        e.contains("head.input_dim") && e.contains("8") && e.contains("4"),
        "{e}"
    );
}

#[test]
fn unknown_optimizer_is_named() {
    let e = err_of(&GOOD.replace("kind = \"adam\"", "kind = \"rmsprop\""));
    assert!(e.contains("rmsprop"), "{e}");
}

#[test]
fn bad_optimizer_value_is_named() {
    let e = err_of(&GOOD.replace("learning_rate = 0.01", "learning_rate = -1.0"));
    assert!(e.contains("optimizer.learning_rate"), "{e}");
}

#[test]
fn unknown_activation_is_named() {
    let e = err_of(&GOOD.replace("\"relu\" }]\n\n[follower]", "\"gelu\" }]\n\n[follower]"));
    assert!(e.contains("gelu"), "{e}");
}

#[test]
fn wrong_logit_count_for_loss_is_named() {
    let e = err_of(&GOOD.replace("units = 1 }", "units = 2 }"));
    assert!(e.contains("head.layers[0].units") && e.contains("1 logit"), "{e}");
}

#[test]
fn duplicate_feature_is_named() {
    let e = err_of(&GOOD.replace(
        "[{ prefix = \"x\", count = 4 }]",
        "[{ prefix = \"x\", count = 4 }, { name = \"x2\" }]",
    ));
    assert!(e.contains("leader.dense[1]") && e.contains("x2"), "{e}");
}

#[test]
fn name_and_prefix_together_is_an_error() {
    let e = err_of(&GOOD.replace("{ name = \"city\",", "{ name = \"city\", prefix = \"c\", count = 2,"));
    assert!(e.contains("follower.sparse[0]"), "{e}");
}

#[test]
fn follower_without_inputs_is_an_error() {
    let e = err_of(&GOOD.replace(
        "sparse = [{ name = \"city\", vocab = 10, dim = 4 }]\nlayers = [{ units = 4, activation = \"relu\" }]",
        "",
    ));
    assert!(e.contains("`follower`"), "{e}");
}

#[test]
fn missing_head_is_named() {
    let cut = GOOD.split("[head]").next().unwrap();
    let e = err_of(cut);
    assert!(e.contains("head"), "{e}");
}

#[test]
fn syntax_error_is_reported_not_panicked() {
    let e = err_of("name = ");
    assert!(e.contains("spec.toml"), "{e}");
}

#[test]
fn wrong_type_is_named() {
    let e = err_of(&GOOD.replace("units = 8", "units = \"eight\""));
    assert!(e.contains("units") || e.contains("eight"), "{e}");
}

#[test]
fn resolve_prefers_files_then_presets() {
    assert!(ModelSpec::resolve("wide_n_deep").is_ok());
    let e = ModelSpec::resolve("no_such_model").unwrap_err().to_string();
    assert!(e.contains("wide_n_deep"), "{e}");
    let dir = std::env::temp_dir().join(format!("vfl-spec-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("m.toml");
    std::fs::write(&p, GOOD).unwrap();
    assert_eq!(ModelSpec::resolve(p.to_str().unwrap()).unwrap().name, "tiny");
    std::fs::remove_dir_all(&dir).unwrap();
}
