# Short recipes over cargo. Every recipe is a plain command you can also type yourself.

# Run the tests (the README's test command): `just test --include-ignored` runs those that
# need a server too, `just test -p tradeflow-tests -- poller::` a few.
test *ARGS:
    scripts/test {{ARGS}}

# The main job: poller vs stream on one seed (mock cluster + SQLite by default).
compare *ARGS:
    cargo run --release --bin tradeflow -- compare {{ARGS}}

# The event-driven rewrite alone.
stream *ARGS:
    cargo run --release --bin tradeflow -- run stream {{ARGS}}

# The poller baseline on the embedded default (SQLite file).
poller *ARGS:
    cargo run --release --bin tradeflow -- run poller {{ARGS}}

# Everything CI does: start PostgreSQL, run the tests and the main job on both stores.
ci:
    bash .ci/run

# A seeded experiment: `just experiment list`, `just experiment poison-message --broker tansu`.
experiment *ARGS:
    cargo run --release --bin tradeflow -- experiment {{ARGS}}

# Every experiment on one backend (default mock): the chaos lessons in one go.
chaos BROKER="mock":
    cargo build --release --bin tradeflow
    for name in $(./target/release/tradeflow experiment list | cut -d' ' -f1); do ./target/release/tradeflow experiment $name --broker {{BROKER}} --out target/experiments/{{BROKER}}/$name; status=$?; if [ $status = 4 ]; then echo "$name: not run on {{BROKER}} (it said why above)"; elif [ $status != 0 ]; then exit $status; fi; done

# The workshop: `just chapter list`, `just chapter check 03`, `just chapter hint 03`.
chapter *ARGS:
    cargo run -q --bin tradeflow -- chapter {{ARGS}}

# The workshop's proof (as CI runs it): every exercise as shipped fails with its declared
# violation, every solution passes on three seeds, the READMEs' commands run as written.
chapters-proof:
    bash .ci/prove-chapters

# The local tansu image for --broker container (no registry needed).
image:
    bash .ci/build-tansu-image

# Three Kafka brokers (KRaft, RF 3, min.insync.replicas 2) + PostgreSQL, for laptops with internet.
up:
    scripts/compose up

# Stop the docker-compose cluster and delete its data.
down:
    scripts/compose down

# The benchmark, quick matrix (about 18 minutes on 2 cores with its 15 s probes): results.json, report.md and
# charts in target/tradeflow-bench/latest/ (earlier runs kept beside it by date).
bench *ARGS:
    cargo run --release --bin tradeflow -- bench {{ARGS}}

# The benchmark's whole matrix (hours on 2 cores).
bench-full *ARGS:
    cargo run --release --bin tradeflow -- bench --full {{ARGS}}

# The micro benchmarks (criterion): codec, ledger, store batch apply at 1/100/1000.
bench-micro:
    cargo bench -p tradeflow-bench --bench micro

# Mutation testing of the code that carries the guarantees (cargo install cargo-mutants
# cargo-nextest; PostgreSQL at DATABASE_URL). The checker's verdicts, in memory and in the
# store, against its unit tests and the store tests (scripts/mutants-checker): about half
# an hour. SCOPE=guarantees: the balance service's batch loop and the store's batch apply,
# against the integration tests (scripts/mutants-guarantees): hours on 2 cores. Report in
# docs/mutants.md.
mutants SCOPE="checker":
    if [ {{SCOPE}} = checker ]; then \
        scripts/mutants-checker; \
    else \
        scripts/mutants-guarantees; \
    fi

# Fuzz the event decoder (TARGET=decode_event) or the dead-letter headers replay reads
# (dead_letter_headers) for SECONDS, one job. Needs nightly and cargo-fuzz: `rustup toolchain
# install nightly` and `cargo +stable install cargo-fuzz --locked`. The committed seeds in
# fuzz/corpus/ are only read; what a run finds goes to fuzz/target/corpus/, a crash to
# fuzz/artifacts/. What each target checks, and the findings: docs/fuzzing.md.
fuzz TARGET="decode_event" SECONDS="60":
    mkdir -p fuzz/target/corpus/{{TARGET}}
    cargo +nightly fuzz run {{TARGET}} fuzz/target/corpus/{{TARGET}} fuzz/corpus/{{TARGET}} -- -max_total_time={{SECONDS}} -print_final_stats=1
