"""posbench's Python-only dependencies for a GPU machine that has torch but no package index.

  python scripts/gpu_deps.py pack DIR [--python-version 3.12]   where the dev venv is
  python scripts/gpu_deps.py link --pack DIR --into SITE        on the GPU machine; then PYTHONPATH=SITE

`pack` copies the installed files of each distribution of NEEDED into DIR and unpacks a wheel of the
compiled ones for the target Python (pip download); DIR/manifest.json lists each one's top-level
entries. `link` symlinks into SITE the distributions whose import name the running Python lacks, so
nothing it already has is shadowed. scripts/gpu_check.sh calls `link` itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# import name -> distribution: what posbench's model, CLI and results files need beyond torch, numpy
# and transformers, and what the GPU image was seen to lack (hydra-core, omegaconf, jsonschema and theirs)
NEEDED = {
    "hydra": "hydra-core",
    "omegaconf": "omegaconf",
    "antlr4": "antlr4-python3-runtime",
    "jsonschema": "jsonschema",
    "referencing": "referencing",
    "jsonschema_specifications": "jsonschema-specifications",
    "rpds": "rpds-py",
    "attrs": "attrs",
    "yaml": "PyYAML",
    "packaging": "packaging",
}
COMPILED = {"rpds-py", "PyYAML"}  # taken as wheels for the target Python (PyYAML runs without its C part)


def link(args) -> None:
    """Links into --into every distribution of the pack whose import name this Python cannot find."""
    import importlib.util

    pack, into = Path(args.pack), Path(args.into)
    into.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((pack / "manifest.json").read_text()) if (pack / "manifest.json").exists() else {}
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    absent = [name for name in missing if NEEDED[name] not in manifest]
    for name in missing:
        for entry in manifest.get(NEEDED[name], []):
            if not (into / entry).exists():
                (into / entry).symlink_to((pack / entry).resolve())
    linked = [name for name in missing if name not in absent]
    print(f"missing here: {', '.join(missing) or 'none'}; linked from {pack}: {', '.join(linked) or 'none'}")
    if absent:
        print(f"not in the pack: {', '.join(absent)}")
    sys.exit(1 if absent else 0)


def pack(args) -> None:
    """Copies the Python-only distributions of NEEDED from this environment into --folder, and unpacks
    wheels of the compiled ones for --python-version; manifest.json lists each one's top-level entries."""
    from importlib import metadata

    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for name in sorted(set(NEEDED.values())):
        version = metadata.version(name)
        if name in COMPILED:
            manifest[name] = unpack_wheel(name, version, args.python_version, folder)
        else:
            manifest[name] = copy_distribution(metadata.distribution(name), folder)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"packed {len(manifest)} distributions into {folder} for Python {args.python_version}")


def copy_distribution(dist, folder: Path) -> list[str]:
    import shutil

    entries = set()
    for file in dist.files:
        if file.parts[0] == ".." or "__pycache__" in file.parts:
            continue
        if file.suffix in (".so", ".pyd"):
            raise SystemExit(f"{dist.metadata['Name']} has compiled code ({file}); add it to COMPILED")
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(dist.locate_file(file), folder / file)
        entries.add(file.parts[0])
    return sorted(entries)


def unpack_wheel(name: str, version: str, python_version: str, folder: Path) -> list[str]:
    import subprocess
    import tempfile
    import zipfile

    platforms = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_28_x86_64"]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            python_version,
            "--implementation",
            "cp",
            *(f"--platform={p}" for p in platforms),
            "-q",
            "-d",
            tmp,
            f"{name}=={version}",
        ]
        subprocess.run(cmd, check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(folder)
            return sorted({member.split("/")[0] for member in archive.namelist()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("folder")
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python, for compiled wheels")
    p = sub.add_parser("link")
    p.add_argument("--pack", required=True)
    p.add_argument("--into", required=True)
    args = parser.parse_args()
    {"pack": pack, "link": link}[args.command](args)


if __name__ == "__main__":
    main()
