//! `vfl`: confidential vertical federated learning.
//!
//! A thin binary: argument parsing and output; the work is done by the
//! library crates (vfl-trainer, vfl-data, vfl-nn).

mod cmd;
mod metrics;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "vfl",
    version,
    about = "enclave-vfl: confidential vertical federated learning (split neural networks, leader + follower)"
)]
struct Cli {
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, global = true, default_value = "info")]
    loglevel: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate planted data and train, evaluate and report, all in one go.
    #[cfg(feature = "dev")]
    Demo(cmd::demo::Args),
    /// Run the leader (holds the labels): listens for the follower.
    Leader(cmd::party::LeaderArgs),
    /// Run the follower: connects to the leader.
    Follower(cmd::party::FollowerArgs),
    /// Run either party, the role from --role or VFL_ROLE (one command line
    /// for both, as an SGX manifest fixes it).
    Party(cmd::party::PartyArgs),
    /// Run one parameter shard of a party (scale-out, docs/scale-out.md).
    Shard(cmd::shard::Args),
    /// Run one worker of a party (scale-out): leader worker i serves
    /// follower worker i.
    Worker(cmd::worker::WorkerArgs),
    /// Run the leader's coordinator (scale-out): hands out the data blocks
    /// and paces the synchronous steps.
    Coordinator(cmd::worker::CoordinatorArgs),
    /// Align the two parties' rows: a private set intersection of example
    /// ids between the enclaves, writing joined blocks both can train on.
    #[command(subcommand)]
    Join(cmd::join::Command),
    /// Generate data sets, measure decoding.
    #[command(subcommand)]
    Data(cmd::data::Command),
    /// Measure training throughput of the in-process step.
    #[cfg(feature = "dev")]
    Bench(cmd::bench::Args),
    /// Remote attestation tools: verify a quote, show our identity, compute mr_signer.
    #[command(subcommand)]
    Attest(cmd::attest::Command),
    /// Inspect model specs.
    #[command(subcommand)]
    Model(cmd::model::Command),
    /// Train a few steps of a small model and print a numeric fingerprint
    /// and the CPU kernels in use (used to check fallback paths).
    Selfcheck(cmd::selfcheck::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cmd::init_logging(&cli.loglevel);
    let result = match cli.command {
        #[cfg(feature = "dev")]
        Command::Demo(a) => cmd::demo::run(a),
        #[cfg(feature = "dev")]
        Command::Bench(a) => cmd::bench::run(a),
        Command::Data(c) => cmd::data::run(c),
        Command::Leader(a) => cmd::party::leader(a),
        Command::Follower(a) => cmd::party::follower(a),
        Command::Party(a) => cmd::party::party(a),
        Command::Shard(a) => cmd::shard::run(a),
        Command::Worker(a) => cmd::worker::worker(a),
        Command::Coordinator(a) => cmd::worker::coordinator(a),
        Command::Join(c) => cmd::join::run(c),
        Command::Model(c) => cmd::model::run(c),
        Command::Attest(c) => cmd::attest::run(c),
        Command::Selfcheck(a) => cmd::selfcheck::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
