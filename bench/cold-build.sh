#!/bin/bash
# A newcomer's first build: a fresh `cargo new` project with one #[remote]
# fn and fleet::init(), depending on SRC/runtime by path, SRC's Cargo.lock
# copied in (the same crate versions for every SRC), `cargo fetch` first,
# then a cold `cargo build --release` with a fresh CARGO_TARGET_DIR.
# Prints the load average, the wall and CPU time and the number of crates
# compiled, then runs the program.
#
#   bench/cold-build.sh [SRC] [WORKDIR]   # SRC: a Fleet checkout (default: this one)
#
# To compare with an older commit: git archive COMMIT | tar -x -C /tmp/old
# and pass /tmp/old as SRC.
set -eu
src=$(cd "${1:-$(dirname "$0")/..}" && pwd)
work=${2:-$(mktemp -d "${TMPDIR:-/tmp}/fleet-cold-build.XXXXXX")}
app=$work/userapp
rm -rf "$app" "$work/target"
cargo new --quiet --name userapp "$app"
echo "fleet = { path = \"$src/runtime\" }" >> "$app/Cargo.toml"
cat > "$app/src/main.rs" <<'RS'
use fleet::remote;

#[remote]
fn square(x: u64) -> u64 {
    x * x
}

fn main() -> fleet::Result<()> {
    let _cluster = fleet::init()?;
    let refs = square::map(0..10u64);
    println!("{:?}", fleet::get_all(&refs)?);
    Ok(())
}
RS
cp "$src/Cargo.lock" "$app/Cargo.lock"
cd "$app"
cargo fetch --quiet
echo "load average at start: $(cat /proc/loadavg)"
/usr/bin/time -f "cpu: user %U s, sys %S s; wall %e s" -o "$work/time" \
    env CARGO_TARGET_DIR="$work/target" cargo build --release 2> "$work/build.log"
echo "load average at end: $(cat /proc/loadavg)"
cat "$work/time"
echo "crates compiled: $(grep -c '^ *Compiling ' "$work/build.log")  (list: $work/build.log)"
"$work/target/release/userapp"
