//! The sluice binary: `run` forwards with a configuration, `check` validates one, `generate` writes test traffic
//! as a pcap file, `bench` measures the worker path in process.
#![forbid(unsafe_code)]

mod bench;
mod build_info;
mod generate;
mod lifecycle;
mod packaging;
mod pcap;
mod platform;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A DPDK layer-4 load balancer: DR, NAT, FULLNAT and TUN, Maglev and the LVS schedulers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bring up the EAL and the ports of a configuration and forward until stopped.
    ///
    /// To capture its ports with dpdk-dumpcap, or read their counters with dpdk-proc-info, run it on hugepages
    /// with `--file-prefix NAME` and `--huge-unlink=never` in `[eal] args`, then `dpdk-dumpcap --file-prefix=NAME
    /// -i DEVICE -w FILE` (config/OPERATIONS.md, "Capture").
    Run(run::RunArgs),
    /// Validate a configuration file and print what it describes.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Measure the worker path (parse, decide, rewrite, tx) on one core with an in-process traffic generator.
    Bench(bench::BenchArgs),
    /// Talk to a running sluice over its control socket: list, stats, rate, conns, connections [service VIP:PORT
    /// tcp|udp | backend ADDR:PORT] [offset N] [limit N], timeout, set-timeout TCP TCPFIN UDP, zero, save, sync,
    /// reload, drain ADDR:PORT, undrain ADDR:PORT, trace CLIENT:PORT VIP:PORT [tcp|udp], add-service,
    /// remove-service, add-backend, remove-backend, set-weight.
    Ctl {
        /// The control socket ([control] socket in the configuration).
        #[arg(long, short, default_value = "/run/sluice.sock")]
        socket: PathBuf,
        #[arg(required = true, num_args = 1..)]
        command: Vec<String>,
    },
    /// Print the sluice configuration equivalent to a keepalived.conf's virtual servers (notes on stderr), and
    /// write its VRRP instances as a VRRP-only keepalived configuration bound to sluice's kernel interface.
    ImportKeepalived {
        /// The keepalived configuration file.
        file: PathBuf,
        #[command(flatten)]
        vrrp: operator::keepalived::VrrpArgs,
    },
    /// Write client-to-VIP traffic (many TCP or UDP flows) into a pcap file.
    Generate(generate::GenerateArgs),
    /// Write the manual pages (sluice.1 and one per subcommand) into a directory (scripts/install.sh).
    #[command(hide = true)]
    Manpages { dir: PathBuf },
    /// Print the completion script for a shell (scripts/install.sh).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    // --version also names the DPDK library and the build, which are only known at run time.
    let command =
        Cli::command().long_version(&*Box::leak(build_info::long_version().into_boxed_str()));
    let cli = Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|error| error.exit());
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Check { config } => operator::check::check(&config),
        Command::Generate(args) => generate::generate(args),
        Command::Bench(args) => bench::bench(args),
        Command::Ctl { socket, command } => operator::ctl::client(&socket, &command),
        Command::ImportKeepalived { file, vrrp } => operator::keepalived::import(&file, &vrrp),
        Command::Manpages { dir } => packaging::write_manpages(Cli::command(), &dir),
        Command::Completions { shell } => packaging::write_completions(Cli::command(), shell),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sluice: {error}");
            ExitCode::FAILURE
        }
    }
}
