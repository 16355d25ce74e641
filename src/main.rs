//! The `classify` binary: parse arguments, set up logging, call the library, map the outcome
//! to an exit code (0 all classified, 1 some inputs failed, 2 usage or model error).

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use classify::cli::{Cli, Command};
use classify::hub::HubOptions;

const EXIT_SOME_FAILED: u8 = 1;
const EXIT_ERROR: u8 = 2;

/// Log lines (warnings by default, `RUST_LOG` for more) on stderr: coloured only on a
/// terminal and without `NO_COLOR`, so a redirected stderr holds no escape codes; stamped
/// with the time only under `serve`, whose log runs for days (a one-off command's lines
/// are read as they come).
fn init_tracing(timestamps: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let colour = classify::cli::colour_on(&std::io::stderr());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false);
    if timestamps {
        fmt.init();
    } else {
        fmt.without_time().init();
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let hub = HubOptions::from_env();
    match cli.command {
        Some(Command::Models { json }) => {
            to_stdout(|out| classify::app::list_models(out, &hub, json))?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Serve(args)) => {
            set_threads(args.model.threads);
            let settings = args.settings()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(classify::server::serve(settings, hub))?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Bench(args)) => {
            set_threads(args.threads);
            let report = classify::bench::run(&args.settings()?)?;
            let text = if args.json {
                serde_json::to_string(&report)? + "\n"
            } else {
                report.to_string()
            };
            to_stdout(|out| out.write_all(text.as_bytes()))?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Completions { shell }) => {
            // Generated into memory: clap_complete panics where a write fails.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "classify", &mut script);
            to_stdout(|out| out.write_all(&script))?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let args = &cli.classify;
            if args.inputs.is_empty() {
                let mut cmd = Cli::command();
                cmd.error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "no INPUT given (use - for stdin)",
                )
                .exit();
            }
            set_threads(args.model.threads);
            let settings = args.settings()?;
            let summary = classify::app::classify(&settings, &hub)?;
            Ok(if summary.any_failed() && !summary.stdout_closed {
                ExitCode::from(EXIT_SOME_FAILED)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// `e` and its causes, `: `-separated, leaving out a cause whose text the message already
/// holds (many errors here say their source in their own text, as `cannot open device: ...`
/// does, so that they read whole wherever they are printed alone).
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain().map(ToString::to_string) {
        if !text.contains(&cause) {
            if !text.is_empty() {
                text += ": ";
            }
            text += &cause;
        }
    }
    text
}

/// Write a subcommand's output to stdout. A reader that went away (`classify models | head
/// -1`) is not an error: what it read is whole, and nobody is left to tell (exit 0, as a
/// classify run does in the same case, `app::classify`). Every other write error is one.
fn to_stdout(
    write: impl FnOnce(&mut std::io::StdoutLock) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match write(&mut out).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result,
    }
}

/// Both rayon (decoding) and candle (inference) size their pools from RAYON_NUM_THREADS.
fn set_threads(threads: Option<u16>) {
    if let Some(n) = threads {
        // Set before any thread pool exists: nothing else runs yet.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

/// Keep freed memory in the heap for the next allocation. By default glibc serves every
/// allocation above its mmap threshold (at most 32 MiB, and a batch-16 activation is larger)
/// with a fresh mapping and unmaps it on free, so each layer page-faults its output in again:
/// keeping the pages makes batch-16 inference 10-32% faster (measured with `classify bench`).
/// Peak RSS rises 2-8% (freed memory is kept for reuse instead of returned). Not for `serve`:
/// a long-running server should hand memory back (in one 3-minute soak run each, peak RSS
/// grew 13% after warm-up with this setting and 1% without it).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; it runs before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

/// Large blocks on cache-line boundaries, for the kernels' vector loads.
#[global_allocator]
static ALLOCATOR: classify::allocator::CacheAligned = classify::allocator::CacheAligned;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serve = matches!(cli.command, Some(Command::Serve(_)));
    if !serve {
        tune_allocator();
    }
    init_tracing(serve);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "classify: {}", describe(&e));
            ExitCode::from(EXIT_ERROR)
        }
    }
}
