#!/usr/bin/env bash
# Runs INSIDE a kvm-kernel-test guest (KT_GUEST=1), started by tools/kernel_matrix.py.
# The repository is shared read-only at $KT_HOST_DIR over 9p, which is slow for many small files
# (a Python start-up that imports numpy took 14 s from 9p, 6 s from tmpfs), so the sources and
# the host-prepared Python dependencies (build/kernel-tier/site.tar) are copied to tmpfs first.
# Output: streamed to the host; sections between "@@begin NAME" / "@@end NAME" lines are
# extracted by the host (doctor table and JSON, pytest's JUnit XML, bpftool listings).
# Usage: kernel-guest.sh [--probes-from DIR] [PYTEST ARGS...]   (default tests: DEFAULT_TESTS)
#   --probes-from DIR: use DIR/*.bpf.o (relative to the repository) instead of probes/*.bpf.o,
#   to try a probe change on the guest kernels without touching probes/.
set -u
[ "${KT_GUEST:-}" = 1 ] || { echo "kernel-guest.sh: run me inside a kvm-kernel-test guest" >&2; exit 2; }
HOST=${KT_HOST_DIR:-/host}
W=/tmp/ht
# The kernel tests, minus those about user-space behaviour that the host tier already proves
# (each costs 15-30 s of Python start-up here): bad input, not root, --count.
T=tests/test_trace_kernel.py
DEFAULT_TESTS=(tests/test_trace_kernel.py tests/guest
  --deselect $T::test_bad_input_fails_before_attaching
  --deselect $T::test_not_root_is_a_clear_error
  --deselect $T::test_count_stops_after_n_packets)
stamp() { echo "@@time $1 $(cut -d' ' -f1 /proc/uptime)"; }
section() {  # section NAME CMD...: the command's output between markers
  local name=$1; shift
  echo "@@begin $name"; "$@" 2>&1; local rc=$?; echo; echo "@@end $name rc=$rc"; return $rc
}

PROBES_FROM=
if [ "${1:-}" = --probes-from ]; then PROBES_FROM=$2; shift 2; fi
stamp start
mkdir -p "$W/src" "$W/site" "$W/tmp"
# only what the kernel tier imports (caches, .venv, build/ and docs stay on the host)
(cd "$HOST" && tar -cf - pyproject.toml tracer decoders probes tests) | tar -C "$W/src" -xf - \
  || { echo "kernel-guest.sh: copying the sources failed"; exit 3; }
tar -C "$W/site" -xf "$HOST/build/kernel-tier/site.tar" \
  || { echo "kernel-guest.sh: no build/kernel-tier/site.tar (run tools/kernel_matrix.py)"; exit 3; }
export PYTHONPATH=$W/site TMPDIR=$W/tmp
export HT_READY_TIMEOUT=${HT_READY_TIMEOUT:-120}  # tests/tracing.py: start-up is slow under TCG
if [ -n "$PROBES_FROM" ]; then
  echo "kernel-guest.sh: BPF objects from $PROBES_FROM, not probes/: $(cd "$HOST/$PROBES_FROM" && ls ./*.bpf.o)"
  cp "$HOST/$PROBES_FROM"/*.bpf.o "$W/src/probes/" || exit 3
fi
cd "$W/src"
# What a Kubernetes node loads at boot (kubeadm's prerequisites, and the tables kube-proxy
# uses: the table probes attach to ipt_do_table/nft_do_chain only while loaded); the rest autoloads.
for m in br_netfilter veth vxlan bridge ip_tables ip6_tables nf_tables; do modprobe "$m" || echo "modprobe $m failed"; done
stamp setup

# one process for both forms: the capability checks are cached per process (~7 s start-up here)
python3 - <<'PY'

from tracer.cli import main
for name, argv in (("doctor", ["doctor"]), ("doctor-json", ["doctor", "--format", "json"])):
    print(f"@@begin {name}", flush=True)
    rc = main(argv)
    print(f"@@end {name} rc={rc}", flush=True)
PY
stamp doctor

args=("$@")
[ ${#args[@]} -gt 0 ] || args=(-m kernel "${DEFAULT_TESTS[@]}")
echo "@@begin pytest"
# junit_family=xunit1: the tests' record_property (hops, chains) reaches the XML (xunit2 drops it)
python3 -m pytest -p no:cacheprovider -p tests.guest.known_gaps -ra -o console_output_style=classic \
  -o junit_family=xunit1 \
  --junitxml="$W/junit.xml" "${args[@]}"
rc=$?
echo; echo "@@end pytest rc=$rc"
stamp pytest

section junit cat "$W/junit.xml"
# What is left loaded after everything: hoptrace's programs must all be gone.
section bpftool-prog bpftool prog show
section bpftool-link bpftool link show
stamp end
exit $rc
