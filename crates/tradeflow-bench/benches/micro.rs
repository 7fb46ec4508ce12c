//! Micro benchmarks: the codec, the ledger and the store's batch apply, each alone.
//!
//! `cargo bench -p tradeflow-bench --bench micro` (about two to three minutes on two cores).
//!
//! - `codec/encode`, `codec/decode`: the JSON wire format, per event.
//! - `ledger/apply_checked`, `ledger/apply_blind`: the rules the oracle and the stores apply.
//! - `store_apply/{sqlite,postgres}/{1,100,1000}`: one transaction per batch with its
//!   apply-log rows. Every iteration applies events the store has not seen: the benchmark
//!   walks through a large workload and, when it runs out, resets the store and starts
//!   again, outside the timed section. Applying known events again would measure the apply
//!   log's deduplication instead. The tables therefore hold between none and
//!   [`STORE_EVENTS`] events while measuring.
//!
//! PostgreSQL comes from `DATABASE_URL` (default: the server `.ci/run` starts); the
//! benchmark creates a database of its own and drops it at the end. Without a server it
//! says so loudly and benchmarks SQLite only (in CI, where the server must be there, it
//! fails instead).

// The only public item of a bench binary is the function criterion_group! generates.
#![expect(missing_docs, reason = "criterion_group! generates an undocumented pub fn")]

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tradeflow_domain::{Event, EventMix, Ledger, RateProfile, Workload, WorkloadConfig, decode, encode};
use tradeflow_store::{ApplyInput, Store, StoreConfig, StoreKind, now_ns};

/// The seed of every workload here; printed first.
const SEED: u64 = 7;
/// Events encoded, decoded or applied to a ledger per iteration.
const DOMAIN_EVENTS: u64 = 10_000;
/// Accounts of every workload here (the command line's default).
const ACCOUNTS: u32 = 1_000;
/// Events the store benchmarks walk through before resetting the store.
const STORE_EVENTS: u64 = 100_000;
/// The batch sizes of the store benchmarks.
const BATCH_SIZES: [usize; 3] = [1, 100, 1_000];
/// The applier name store benchmarks leave in the apply log.
const APPLIER: &str = "bench";
/// The PostgreSQL server used when `DATABASE_URL` is not set.
const DEFAULT_DATABASE_URL: &str = "postgres://tradeflow:tradeflow@127.0.0.1:5432/tradeflow";
/// How long to wait for the PostgreSQL server before benchmarking SQLite only.
const POSTGRES_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn workload(events: u64) -> Workload {
    Workload::generate(&WorkloadConfig {
        seed: SEED,
        events,
        accounts: ACCOUNTS,
        rate_per_s: 10_000.0,
        profile: RateProfile::Steady,
        skew: tradeflow_domain::workload::ACCOUNT_SKEW,
        mix: EventMix::default(),
    })
    .expect("the benchmark workload is valid")
}

fn codec(criterion: &mut Criterion) {
    eprintln!("seed: {SEED}");
    let events: Vec<Event> = workload(DOMAIN_EVENTS).plain_events().collect();
    let payloads: Vec<Vec<u8>> = events.iter().map(encode).collect();
    let mut group = criterion.benchmark_group("codec");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("encode", |bencher| {
        bencher.iter(|| {
            for event in &events {
                black_box(encode(black_box(event)));
            }
        });
    });
    group.bench_function("decode", |bencher| {
        bencher.iter(|| {
            for payload in &payloads {
                black_box(decode(black_box(payload)).expect("generated events decode"));
            }
        });
    });
    group.finish();
}

fn ledger(criterion: &mut Criterion) {
    let events: Vec<Event> = workload(DOMAIN_EVENTS).plain_events().collect();
    let mut group = criterion.benchmark_group("ledger");
    group.throughput(Throughput::Elements(events.len() as u64));
    // A new ledger each iteration, so every iteration does the same work; the ledger is
    // returned to be dropped outside the timed section.
    group.bench_function("apply_checked", |bencher| {
        bencher.iter_batched(
            Ledger::new,
            |mut ledger| {
                for event in &events {
                    black_box(ledger.apply_checked(black_box(event)));
                }
                ledger
            },
            BatchSize::SmallInput,
        );
    });
    group.bench_function("apply_blind", |bencher| {
        bencher.iter_batched(
            Ledger::new,
            |mut ledger| {
                for event in &events {
                    black_box(ledger.apply_blind(black_box(event)));
                }
                ledger
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

/// Where the store benchmark is in its workload.
struct Walk {
    next: usize,
    len: usize,
}

impl Walk {
    /// For each of `iterations` batches of `batch_size` events: whether the store must be
    /// reset first (the workload ran out), and which events to apply.
    fn plan(&mut self, iterations: u64, batch_size: usize) -> Vec<(bool, Range<usize>)> {
        (0..iterations)
            .map(|_| {
                let reset = self.next + batch_size > self.len;
                if reset {
                    self.next = 0;
                }
                let range = self.next..self.next + batch_size;
                self.next += batch_size;
                (reset, range)
            })
            .collect()
    }
}

/// Benchmarks batch applies on one store, at every batch size.
fn bench_store(criterion: &mut Criterion, runtime: &tokio::runtime::Runtime, store: &Store, events: &Arc<Vec<Event>>) {
    let mut group = criterion.benchmark_group("store_apply");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    for batch_size in BATCH_SIZES {
        runtime.block_on(store.reset()).expect("the store resets");
        let mut walk = Walk {
            next: 0,
            len: events.len(),
        };
        group.throughput(Throughput::Elements(batch_size as u64));
        group.bench_with_input(
            BenchmarkId::new(store.kind().as_str(), batch_size),
            &batch_size,
            |bencher, &batch_size| {
                bencher.to_async(runtime).iter_custom(|iterations| {
                    let plan = walk.plan(iterations, batch_size);
                    let store = store.clone();
                    let events = Arc::clone(events);
                    async move {
                        let mut measured = Duration::ZERO;
                        for (reset, range) in plan {
                            if reset {
                                store.reset().await.expect("the store resets");
                            }
                            let intended_at_ns = now_ns();
                            let inputs: Vec<ApplyInput<'_>> =
                                events[range].iter().map(|event| ApplyInput { event, intended_at_ns }).collect();
                            let started = Instant::now();
                            let summary = store.apply_batch(&inputs, APPLIER).await.expect("the batch applies");
                            measured += started.elapsed();
                            assert_eq!(summary.duplicates, 0, "every benchmarked event is new to the store");
                        }
                        measured
                    }
                });
            },
        );
    }
    group.finish();
}

/// A fresh PostgreSQL database for the benchmark: the store, the admin URL and the
/// database's name (to drop it afterwards), or why there is none.
async fn postgres_store() -> Result<(Store, String, String), String> {
    use sqlx::Connection;
    let base = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
    let shown = tradeflow_store::connect::redact(&base);
    let mut admin = tokio::time::timeout(POSTGRES_CONNECT_TIMEOUT, sqlx::PgConnection::connect(&base))
        .await
        .map_err(|_| format!("{shown}: no answer in {POSTGRES_CONNECT_TIMEOUT:?}"))?
        .map_err(|error| format!("{shown}: {error}"))?;
    let name = format!("tradeflow_bench_{}_{}", std::process::id(), now_ns());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .map_err(|error| format!("creating database {name} on {shown} (the role needs CREATEDB): {error}"))?;
    let _ = admin.close().await;
    let Some((server, _)) = base.rsplit_once('/') else {
        return Err(format!("DATABASE_URL {shown} names no database"));
    };
    let store = Store::connect(&StoreConfig {
        kind: StoreKind::Postgres,
        url: format!("{server}/{name}"),
    })
    .await
    .map_err(|error| error.to_string())?;
    Ok((store, base, name))
}

/// Drops the benchmark's database once its store is closed.
async fn drop_postgres_database(store: Store, base: &str, name: &str) {
    use sqlx::Connection;
    store.close().await;
    let dropped = async {
        let mut admin = sqlx::PgConnection::connect(base).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&mut admin).await?;
        admin.close().await
    };
    if let Err(error) = dropped.await {
        eprintln!("could not drop the benchmark database {name}: {error}");
    }
}

fn store_apply(criterion: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let events: Arc<Vec<Event>> = Arc::new(workload(STORE_EVENTS).plain_events().collect());

    let directory = tempfile::tempdir().expect("a temporary directory");
    let sqlite = runtime
        .block_on(Store::connect(&StoreConfig::sqlite_file(&directory.path().join("bench.db"))))
        .expect("the SQLite store opens");
    bench_store(criterion, &runtime, &sqlite, &events);
    runtime.block_on(sqlite.close());

    match runtime.block_on(postgres_store()) {
        Ok((postgres, base, name)) => {
            bench_store(criterion, &runtime, &postgres, &events);
            runtime.block_on(drop_postgres_database(postgres, &base, &name));
        }
        Err(reason) => {
            if std::env::var("CI").is_ok_and(|value| !value.is_empty() && value != "false" && value != "0") {
                panic!("store apply on PostgreSQL: the server is required in CI but unavailable: {reason}");
            }
            eprintln!("\n*** SKIPPED store apply on PostgreSQL: {reason} ***\n");
        }
    }
}

criterion_group! {
    name = micro;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = codec, ledger, store_apply
}
criterion_main!(micro);
