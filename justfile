# Short recipes over cargo. Every recipe is a plain command you can also type yourself.

# Run the tests (the README's test command).
test:
    cargo test --workspace

# The poller baseline on the embedded default (SQLite file).
poller *ARGS:
    cargo run --release --bin tradeflow -- run poller {{ARGS}}

# Everything CI does: start PostgreSQL, run the tests and the main job on both stores.
ci:
    bash .ci/run
