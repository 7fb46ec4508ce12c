# Sourced by scripts/mutants-guarantees and scripts/mutants-checker: checks the tools and
# the database, and sets what every build and test of a mutant shares. Takes the packages
# a mutant's tests are built from (see scripts/mutants-cargo).
command -v cargo-mutants >/dev/null || { echo "cargo-mutants is not installed: cargo install cargo-mutants" >&2; exit 1; }
cargo nextest --version >/dev/null 2>&1 || { echo "cargo-nextest is not installed: cargo install cargo-nextest (a mutant's tests stop at the first failure, and the selection spans packages)" >&2; exit 1; }
[[ -n ${DATABASE_URL:-} ]] || { echo "DATABASE_URL is not set: the store tests need PostgreSQL (bash .ci/run sets it up)" >&2; exit 1; }
TRADEFLOW_REAL_CARGO=$(rustup which cargo)
TRADEFLOW_MUTANTS_PACKAGES="$*"
export TRADEFLOW_REAL_CARGO TRADEFLOW_MUTANTS_PACKAGES CARGO="$PWD/scripts/mutants-cargo"
# Run straight (not as `cargo mutants`): rustup's proxy then picks the toolchain, and the
# mutants' builds skip debug info (linking the test binary is most of a mutant's build).
export RUSTUP_TOOLCHAIN=${RUSTUP_TOOLCHAIN:-stable} CARGO_PROFILE_DEV_DEBUG=0
# mold (apt-get install mold), where there is one, links the test binaries in seconds.
if command -v mold >/dev/null; then export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-fuse-ld=mold"; fi
export TRADEFLOW_REQUIRE_BACKENDS=${TRADEFLOW_REQUIRE_BACKENDS:-mock,postgres}
# cargo-mutants writes its output under target/, which a fresh clone does not have yet.
mkdir -p target
