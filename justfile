# Short recipes over cargo. Every recipe is a plain command you can also type yourself.

# Run the tests (the README's test command).
test:
    cargo test --workspace

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
