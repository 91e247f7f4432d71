//! Shard processes for local scale-out runs (`vfl demo --workers`,
//! `vfl bench --sharded --remote`): `vfl shard` children of this process,
//! one simulated signer per party so that each party's processes admit
//! only their own.

use std::io::BufRead;
use std::path::Path;

use anyhow::Context;
use vfl_attest::PartyRole;
use vfl_nn::{ModelSpec, Role};
use vfl_trainer::sharded::remote::ShardAddrs;

/// A `vfl shard` child process and the address it serves.
struct ShardProcess {
    role: &'static str,
    child: std::process::Child,
    addr: String,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

/// Both parties' shard processes and how the workers reach them.
pub struct ShardProcesses {
    procs: Vec<ShardProcess>,
    pub leader: ShardAddrs,
    pub follower: ShardAddrs,
}

impl ShardProcesses {
    /// Starts `shards` shard processes per party for `workers` worker pairs
    /// of `model` (its preset name or file, as given), with a simulated
    /// two-signer set-up under `work`.
    pub fn start(
        work: &Path,
        model: &str,
        spec: &ModelSpec,
        (workers, shards): (usize, usize),
    ) -> anyhow::Result<Self> {
        let sim = vfl_attest::policy::write::two_party_sim(&work.join("attestation-two-signers"))?;
        let attest = |signer: &str| -> Vec<String> {
            vec![
                "--attestation".into(),
                "simulated".into(),
                "--sim-root-key".into(),
                sim.root_key.display().to_string(),
                "--policy".into(),
                sim.policy.display().to_string(),
                "--sim-mr-signer".into(),
                signer.into(),
            ]
        };
        let mut procs = Vec::new();
        for (role, signer) in [("leader", &sim.leader_signer), ("follower", &sim.follower_signer)] {
            for s in 0..shards {
                procs.push(start(model, (role, s, shards, workers), &attest(signer))?);
            }
        }
        let at = |role: &str, own: PartyRole, signer: &str| -> anyhow::Result<ShardAddrs> {
            let party = if own == PartyRole::Leader {
                Role::Leader
            } else {
                Role::Follower
            };
            Ok(ShardAddrs {
                own,
                addrs: procs
                    .iter()
                    .filter(|p| p.role == role)
                    .map(|p| p.addr.clone())
                    .collect(),
                security: super::attest::sim_security(&sim.root_key, &sim.policy, signer)?,
                max_message: vfl_trainer::sharded::message_limit(spec, party),
                wait: std::time::Duration::from_secs(30),
            })
        };
        let leader = at("leader", PartyRole::Leader, &sim.leader_signer)?;
        let follower = at("follower", PartyRole::Follower, &sim.follower_signer)?;
        Ok(ShardProcesses {
            procs,
            leader,
            follower,
        })
    }

    /// After the workers left: every shard exited successfully, having
    /// applied `steps` steps.
    pub fn finish(mut self, steps: u64) -> anyhow::Result<()> {
        for mut p in std::mem::take(&mut self.procs) {
            let done = p.lines.find_map(|l| l.ok().filter(|l| l.contains("done after")));
            let status = p.child.wait()?;
            anyhow::ensure!(
                status.success()
                    && done
                        .as_deref()
                        .is_some_and(|d| d.ends_with(&format!("after {steps} steps"))),
                "a shard of the {} failed ({status}; {done:?})",
                p.role
            );
        }
        Ok(())
    }
}

/// On an error before [`ShardProcesses::finish`], no shard is left behind.
impl Drop for ShardProcesses {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// Starts `vfl shard` for `role`, shard `index` of `shards`, and waits for
/// the address it listens on.
fn start(
    model: &str,
    (role, index, shards, workers): (&'static str, usize, usize, usize),
    attest: &[String],
) -> anyhow::Result<ShardProcess> {
    let exe = std::env::current_exe().context("locating the vfl executable")?;
    let mut child = std::process::Command::new(&exe)
        .args(["--loglevel", "warn", "shard", "--role", role, "--model", model])
        .args(["--index", &index.to_string(), "--shards", &shards.to_string()])
        .args(["--workers", &workers.to_string(), "--local-addr", "127.0.0.1:0"])
        .args(["--peer-timeout", "60"])
        .args(attest)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting vfl shard {index} of the {role}"))?;
    let out = child.stdout.take().context("the shard's stdout")?;
    let mut lines = std::io::BufReader::new(out).lines();
    let first = lines.next().transpose()?.unwrap_or_default();
    let Some((_, addr)) = first.rsplit_once("listening on ") else {
        let _ = child.kill();
        anyhow::bail!("vfl shard {index} of the {role} did not start: {first:?}");
    };
    Ok(ShardProcess {
        role,
        addr: addr.trim().to_string(),
        child,
        lines,
    })
}
