//! Every fuzz target's body (`fuzz/bodies/`, the code cargo-fuzz runs)
//! over its committed seed corpus (`fuzz/corpus/<target>/`, which also keeps
//! the inputs of past findings) and over deterministic mutations of each
//! seed: bytes flipped, cut short, duplicated, spliced with another seed. No
//! input may panic. This runs in every test run, so the bodies compile and
//! hold against the seeds without a cargo-fuzz build; `scripts/fuzz.sh`
//! fuzzes with coverage guidance.

use std::path::PathBuf;

#[path = "../../../../fuzz/bodies/collateral.rs"]
#[allow(dead_code)]
mod collateral;
#[path = "../../../../fuzz/bodies/csv.rs"]
#[allow(dead_code)]
mod csv;
#[path = "../../../../fuzz/bodies/identity.rs"]
#[allow(dead_code)]
mod identity;
#[path = "../../../../fuzz/bodies/join_csv.rs"]
#[allow(dead_code)]
mod join_csv;
#[path = "../../../../fuzz/bodies/join_frames.rs"]
#[allow(dead_code)]
mod join_frames;
#[path = "../../../../fuzz/bodies/link.rs"]
#[allow(dead_code)]
mod link;
#[path = "../../../../fuzz/bodies/model_file.rs"]
#[allow(dead_code)]
mod model_file;
#[path = "../../../../fuzz/bodies/party.rs"]
#[allow(dead_code)]
mod party;
#[path = "../../../../fuzz/bodies/policy.rs"]
#[allow(dead_code)]
mod policy;
#[path = "../../../../fuzz/bodies/quote.rs"]
#[allow(dead_code)]
mod quote;
#[path = "../../../../fuzz/bodies/ratls_cert.rs"]
#[allow(dead_code)]
mod ratls_cert;
#[path = "../../../../fuzz/bodies/sealed.rs"]
#[allow(dead_code)]
mod sealed;
#[path = "../../../../fuzz/bodies/tf_example.rs"]
#[allow(dead_code)]
mod tf_example;
#[path = "../../../../fuzz/bodies/tfrecord.rs"]
#[allow(dead_code)]
mod tfrecord;
#[path = "../../../../fuzz/bodies/wire.rs"]
#[allow(dead_code)]
mod wire;

/// A fuzz target's body: one input.
type Body = fn(&[u8]);

/// The targets replayed here (a test checks the list against
/// fuzz/Cargo.toml and the wrappers in fuzz/fuzz_targets/).
const TARGETS: &[(&str, Body)] = &[
    ("collateral", collateral::run),
    ("csv", csv::run),
    ("identity", identity::run),
    ("join_csv", join_csv::run),
    ("join_frames", join_frames::run),
    ("link", link::run),
    ("model_file", model_file::run),
    ("party", party::run),
    ("policy", policy::run),
    ("quote", quote::run),
    ("ratls_cert", ratls_cert::run),
    ("sealed", sealed::run),
    ("tf_example", tf_example::run),
    ("tfrecord", tfrecord::run),
    ("wire", wire::run),
];

#[test]
fn every_fuzz_targets_body_over_its_corpus_and_mutations() {
    for &(name, run) in TARGETS {
        replay(name, run);
    }
}

#[test]
fn every_fuzz_target_is_replayed() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let mut declared: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \"")?.strip_suffix('"'))
        .filter(|n| *n != "vfl-fuzz")
        .collect();
    declared.sort_unstable();
    let replayed: Vec<&str> = TARGETS.iter().map(|t| t.0).collect();
    assert_eq!(
        declared, replayed,
        "fuzz/Cargo.toml's targets and the replayed ones differ"
    );
    // Each cargo-fuzz target is the one-line wrapper around the body
    // replayed here (CI does not build the fuzz crate).
    for name in replayed {
        let path = root.join(format!("fuzz_targets/{name}.rs"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(&format!("#[path = \"../bodies/{name}.rs\"]\nmod body;"))
                && text.contains("|data: &[u8]| body::run(data));"),
            "{}: not the wrapper of fuzz/bodies/{name}.rs",
            path.display()
        );
    }
}

/// Mutations per seed.
const MUTATIONS: usize = 256;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!seeds.is_empty(), "{}: no seeds", dir.display());
    seeds
}

/// A deterministic variation of `seed` (`other` for splicing).
fn mutate(rng: &mut vfl_nn::rng::Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    let pick = |rng: &mut vfl_nn::rng::Rng, n: usize| rng.below(n.max(1) as u64) as usize;
    for _ in 0..=rng.below(3) {
        match rng.below(5) {
            0 if !v.is_empty() => {
                let i = pick(rng, v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = pick(rng, v.len());
                v[i] = [0x00, 0xff, 0x7f, 0x80][pick(rng, 4)];
            }
            2 => v.truncate(pick(rng, v.len() + 1)),
            3 if !v.is_empty() => {
                let (a, b) = (pick(rng, v.len()), pick(rng, v.len()));
                let (a, b) = (a.min(b), a.max(b));
                let chunk = v[a..b].to_vec();
                v.splice(b..b, chunk);
            }
            _ => {
                let cut = pick(rng, v.len() + 1);
                let from = pick(rng, other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
        }
    }
    v
}

fn replay(target: &str, run: Body) {
    let seeds = corpus(target);
    let mut rng = vfl_nn::rng::Rng::new(vfl_nn::rng::derive_seed(7, target));
    for (i, seed) in seeds.iter().enumerate() {
        run(seed);
        let other = &seeds[(i + 1) % seeds.len()];
        for _ in 0..MUTATIONS {
            run(&mutate(&mut rng, seed, other));
        }
    }
    run(&[]);
}
