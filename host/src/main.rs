//! `powerautomation`: the host server. It serves its own endpoints, loads plugins at run time
//! and keeps running whatever state they are in.

#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use plugin_api::Role;
use powerautomation::{auth, config, server};

/// The host allocates and frees small blocks on every request, across threads (a request is
/// read on one worker, answered from another, and plugin threads free what the host handed
/// them); mimalloc does that with per-thread heaps and without a shared arena lock.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "powerautomation",
    version,
    about = "PowerAutomation host: core API plus hot-swappable plugins (deployment_mcp)",
    after_help = "Examples:\n  powerautomation --config config/default.toml\n  powerautomation check-config --config /etc/powerautomation.toml\n  powerautomation keygen --name ci --role developer\n\nEnvironment variables PA_<SECTION>__<KEY> override the file, e.g. PA_SERVER__LISTEN=127.0.0.1:9000."
)]
struct Cli {
    /// Configuration file (TOML). Default: config/default.toml when it exists.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,

    /// Run without loading any plugin (deployment endpoints answer 503).
    #[arg(long)]
    no_plugins: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server (the default).
    Serve,
    /// Validate the configuration and print it merged, with secrets masked.
    CheckConfig,
    /// Create an API key: prints the key once and the line to add to [auth] keys.
    Keygen {
        /// Who the key is for, e.g. "ops" or "ci".
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: config::RoleName,
    },
    /// Check or export the audit log of the store the configuration names.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Runs one plugin with `isolation = "process"` for the host that started it (internal).
    #[command(hide = true)]
    PluginRunner {
        /// The host's process id: the runner exits if its parent is another process.
        #[arg(long)]
        host_pid: u32,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walks the chain from its checkpoint to its head: exit 0 when intact, 1 naming the first
    /// entry changed, missing or out of order (3 when the store cannot be read).
    Verify,
    /// Writes every entry, oldest first, as NDJSON to standard output.
    Export {
        /// Only entries after this seq (to resume an export).
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        after: u64,
    },
}

/// Exit code for configuration and usage errors.
const EXIT_CONFIG: u8 = 2;
/// Exit code when the store cannot be opened or read.
const EXIT_STORE: u8 = 3;

fn audit_verify(store: &dyn record_store::RecordStore) -> ExitCode {
    match record_store::audit::verify(store) {
        Ok(record_store::Verdict::Intact { entries, from, to }) => {
            if from > 0 {
                println!("audit log intact: {entries} entries, {} to {to} (entries up to {from} were pruned behind the checkpoint)", from + 1);
            } else {
                println!("audit log intact: {entries} entries");
            }
            ExitCode::SUCCESS
        }
        Ok(record_store::Verdict::Broken { seq, problem }) => {
            eprintln!("audit log broken at entry {seq}: {problem}");
            ExitCode::from(1)
        }
        Err(error) => fail(EXIT_STORE, &format!("cannot read the audit log: {error}")),
    }
}

fn audit_export(store: &dyn record_store::RecordStore, mut after: u64) -> ExitCode {
    use std::io::Write as _;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    loop {
        let rows = match store.audit_scan(after, record_store::audit::SCAN_PAGE) {
            Ok(rows) => rows,
            Err(error) => return fail(EXIT_STORE, &format!("cannot read the audit log: {error}")),
        };
        let Some(last) = rows.last().map(|row| row.record.seq) else {
            break;
        };
        for row in &rows {
            if writeln!(out, "{}", row.record.to_json()).is_err() {
                // The reader went away (a pipe closed): nothing more to write.
                return ExitCode::SUCCESS;
            }
        }
        after = last;
    }
    if out.flush().is_err() {
        return ExitCode::SUCCESS;
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Keygen { name, role } => keygen(&name, role),
        Command::PluginRunner { host_pid } => {
            powerautomation::plugin::process::runner::run(host_pid)
        }
        Command::Audit { command } => {
            let config = match config::load(cli.config.as_deref()) {
                Ok((config, _)) => config,
                Err(error) => return fail(EXIT_CONFIG, &error),
            };
            let store = match server::open_store_for_reading(&config) {
                Ok(store) => store,
                Err(error) => return fail(EXIT_STORE, &error),
            };
            match command {
                AuditCommand::Verify => audit_verify(&*store),
                AuditCommand::Export { after } => audit_export(&*store, after),
            }
        }
        Command::CheckConfig => match config::load(cli.config.as_deref()) {
            Ok((config, source)) => match config.masked_toml() {
                Ok(text) => {
                    let origin = source
                        .file
                        .map(|file| file.display().to_string())
                        .unwrap_or_else(|| "built-in defaults".into());
                    println!("# configuration is valid (from {origin} and PA_ variables)\n{text}");
                    ExitCode::SUCCESS
                }
                Err(error) => fail(EXIT_CONFIG, &error),
            },
            Err(error) => fail(EXIT_CONFIG, &error),
        },
        Command::Serve => {
            let (config, source) = match config::load(cli.config.as_deref()) {
                Ok(loaded) => loaded,
                Err(error) => return fail(EXIT_CONFIG, &error),
            };
            server::init_logging(&config);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => return fail(1, &format!("cannot start the async runtime: {error}")),
            };
            match runtime.block_on(server::serve(config, source, cli.no_plugins)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error}");
                    fail(1, &error)
                }
            }
        }
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("powerautomation: {message}");
    ExitCode::from(code)
}

fn keygen(name: &str, role: config::RoleName) -> ExitCode {
    if name.trim().is_empty() || name.contains(['"', '\\', '\n']) {
        return fail(
            EXIT_CONFIG,
            "--name must be non-empty and contain no quotes, backslashes or newlines",
        );
    }
    let role = Role::from(role);
    match auth::generate_key() {
        Ok(key) => {
            let digest = hex::encode(auth::sha256(&key));
            println!(
                "API key for {name} ({}), shown only now; store it safely:\n",
                role.as_str()
            );
            println!("  {key}\n");
            println!("Add this entry to `keys` under [auth] in the config file:\n");
            println!(
                "  {{ name = \"{name}\", role = \"{}\", sha256 = \"{digest}\" }},",
                role.as_str()
            );
            ExitCode::SUCCESS
        }
        Err(error) => fail(1, &error),
    }
}
