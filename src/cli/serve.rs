//! `ferry serve`: run the server.

use std::net::SocketAddr;

use anyhow::Context;

use ferry::config::Config;
use ferry::service;

use super::{ServeArgs, ServerLocation};

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: never in a file or the journal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// A server error for the operator: its sentence, and beneath a fault the
/// OS or database wording.
fn with_detail(e: ferry::error::Error) -> anyhow::Error {
    match e.log_detail() {
        Some(detail) => anyhow::anyhow!("{e} ({detail})"),
        None => anyhow::anyhow!("{e}"),
    }
}

/// `ferry gc` ran, but some deletions failed: exit status 2, not 1.
#[derive(Debug)]
pub struct SomeFailed(pub u64);

impl std::fmt::Display for SomeFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} deletion(s) failed (each is logged above); the rest of the collection ran, and the next run tries them again",
            self.0
        )
    }
}

impl std::error::Error for SomeFailed {}

/// `ferry gc`: one collection against the data dir, then a report.
pub fn gc(location: ServerLocation) -> anyhow::Result<()> {
    ferry::crash::arm_from_env().map_err(anyhow::Error::msg)?;
    let cfg = location.load()?;
    cfg.validate()?;
    if cfg.database_url.is_none() && !service::DataDir::new(&cfg.data_dir).db().exists() {
        anyhow::bail!(
            "no ferry database in {}: pass the server's --data-dir or --config",
            cfg.data_dir.display()
        );
    }
    init_tracing(&cfg.log_format);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let opened = service::open(&cfg)?;
        let report = service::collector(&opened.state, &cfg)
            .run()
            .await
            .map_err(with_detail)?;
        println!("{}", serde_json::to_string(&report)?);
        if report.failed > 0 {
            return Err(SomeFailed(report.failed).into());
        }
        Ok(())
    })
}

/// `ferry serve`: takes the data dir's lock, opens it, listens, serves
/// until Ctrl-C.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    ferry::crash::arm_from_env().map_err(anyhow::Error::msg)?;
    let mut cfg = args.location.load()?;
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    cfg.validate()?;
    if args.check_config {
        println!("configuration is valid");
        print!("{}", cfg.limits());
        return Ok(());
    }
    init_tracing(&cfg.log_format);
    // Held until this function returns; released by the kernel if the
    // process dies. Taken before anything is opened or bound.
    let mut lock = service::DataDir::new(&cfg.data_dir).lock()?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let served = runtime.block_on(async {
        let opened = service::open(&cfg)?;
        let listener = std::net::TcpListener::bind(cfg.listen)
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        lock.record_listen(addr)?;
        if let Some(token) = &opened.first_admin_token {
            print_first_start(&cfg, addr, token);
        }
        tracing::info!(%addr, data_dir = %cfg.data_dir.display(), "ferry is serving");
        let engine = opened.state.engine.clone();
        engine.resume_verifying().await.map_err(with_detail)?;
        let collector = std::sync::Arc::new(service::collector(&opened.state, &cfg));
        // Disk and database agree before anything is served.
        if let Err(e) = collector.reconcile().await {
            tracing::warn!(error = %e, "checking the blob store against the database failed");
        }
        let interval = std::time::Duration::from_secs(cfg.gc_interval_secs);
        let flush_every = std::time::Duration::from_secs(cfg.access_flush_secs);
        tokio::spawn(ferry::gc::run_periodic(collector, interval, flush_every));
        if let Some(addr) = cfg.metrics_listen {
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on metrics-listen {addr}"))?;
            tracing::info!(%addr, "serving /metrics without a token");
            let state = opened.state.clone();
            tokio::spawn(async move {
                let never = std::future::pending::<()>();
                if let Err(e) = ferry::server::run_metrics(listener, state, never).await {
                    tracing::warn!(error = %e, "the metrics listener stopped");
                }
            });
        }
        let (db, access) = (opened.state.db.clone(), opened.state.access.clone());
        tokio::spawn(service::watch_revocations(opened.state.clone()));
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        ferry::server::run(listener, opened.state, shutdown).await?;
        // Keep the read times noted since the last flush.
        if let Err(e) = access.flush(&db).await {
            tracing::warn!(error = %e, "recording read times failed");
        }
        Ok(())
    });
    // Background tasks (GC, revocation reload) stop with the runtime,
    // before the lock lets another server in.
    drop(runtime);
    drop(lock);
    served
}

fn print_first_start(cfg: &Config, addr: SocketAddr, token: &str) {
    let dir = cfg.data_dir.display();
    println!(
        "First start: created {dir} with a new root key.\n\
         \n\
         Admin token (shown once; every right on every cache, valid 1 year):\n\
         \n    {token}\n\
         \n\
         Next, with ferry's own client:\n\
         \n    ferry login home http://{addr} '{token}' --set-default\
         \n    ferry cache create home:main\
         \n    ferry push home:main ./result\
         \n    ferry use home:main\n\
         \n\
         A narrower token for a laptop or a CI job:\n\
         \n    ferry token mint --data-dir {dir} --sub laptop --validity 1y --pull main --push main\n"
    );
}
