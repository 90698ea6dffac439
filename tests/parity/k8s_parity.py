#!/usr/bin/env python3
"""Parity between `coxswain validate` and the official Kubernetes schemas.

Usage:
    python3 tests/parity/k8s_parity.py --coxswain PATH_TO_BINARY
        [--json] [--k8s-version V] [--testdata DIR] [--jobs N] [--timeout S]

For every .yaml/.yml/.json file under schema/testdata/valid/ and
schema/testdata/invalid/ (each file is a self-contained tree):

  (a) kubernetes-validate --strict judges it, in-process through its Python
      API (its own multi-document YAML loader, then
      kubernetes_validate.validate(doc, version, strict=True) per document);
  (b) `<coxswain> validate <file> --output json` judges it
      (exit 0 = valid, 1 = invalid, anything else = harness error).

Rules (a row that breaks one is FAILED):
  * whatever kubernetes-validate rejects, coxswain must reject;
  * whatever coxswain rejects and kubernetes-validate accepts ("coxswain is
    stricter") must be listed in DELIBERATE with the reason;
  * a DELIBERATE entry whose file is not such a case (or does not exist) is
    stale;
  * files in valid/ must be accepted by both, files in invalid/ must be
    rejected by coxswain;
  * when both accept, both must count the same number of objects;
  * coxswain must exit 0 or 1 with well-formed JSON that agrees with its
    exit code.

How kubernetes-validate's verdict is derived (mirrors the exit status of
`kubernetes-validate --strict -k V FILE`, with one exception):
  * YAML it cannot parse, a document that is not a mapping, a document
    missing apiVersion/kind, or a failed schema check -> rejected;
  * the CLI also exits non-zero when an object that passed has no
    metadata.name (it crashes formatting its report) -> rejected here too;
  * EXCEPTION: for a kind/apiVersion it has no schema for, the CLI only
    prints a warning and exits 0; here that counts as rejected ("no official
    schema"), since the Kubernetes API would refuse such an object;
  * empty documents are skipped (as the CLI does): an empty file is accepted.

Prints a table (or JSON with --json) and, last, `parity: N passed, M failed`
(stdout for the table, stderr with --json). Exit status: 0 when M == 0,
1 when M > 0, 2 on usage errors (missing binary, unsupported version, no
corpus). Only the standard library and kubernetes_validate are used.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------
# Files on which coxswain is deliberately stricter than the official schemas.
#
# Key: the file's name inside schema/testdata/ -- either its bare file name
# ("dup-key.yaml") or, if that is ambiguous, its corpus-relative path
# ("invalid/dup-key.yaml"). Value: WHY coxswain rejects what the schemas
# accept. Legitimate reasons include:
#   - semantic checks Kubernetes only makes at admission/apply or run time
#     (DNS-1123 names, port ranges, limits >= requests, selector/template
#     label match, enum values the schema types only as strings, quantity
#     syntax, base64 in Secret data, ...);
#   - references across objects (ConfigMap/Secret/Namespace/HPA target must
#     exist in the same tree), uniqueness of names;
#   - coxswain's narrower scope (unsupported kinds or fields, status in Git);
#   - YAML that coxswain refuses on purpose (tags, duplicate keys, aliases,
#     anchors/merge keys, YAML 1.1 literals) while PyYAML silently accepts.
# Only files in invalid/ belong here; a valid/ file must be accepted by both.
# An entry that is not (or no longer) a "coxswain is stricter" case FAILS as
# stale, so this list cannot rot.
# ---------------------------------------------------------------------------
DELIBERATE: dict[str, str] = {
}

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TESTDATA = REPO_ROOT / "schema" / "testdata"
CORPORA = ("valid", "invalid")
EXTENSIONS = {".yaml", ".yml", ".json"}
ERROR_KEYS = {"file": str, "line": int, "column": int, "pointer": str, "reason": str, "code": str}

ACCEPT, REJECT, ERROR = "accept", "reject", "error"


@dataclass
class KvResult:
    verdict: str  # accept | reject
    objects: int = 0
    detail: str = ""
    errors: list[str] = field(default_factory=list)


@dataclass
class CoxResult:
    verdict: str  # accept | reject | error
    exit_code: int | None = None
    objects: int | None = None
    detail: str = ""
    errors: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Row:
    file: str
    corpus: str
    kubernetes_validate: KvResult
    coxswain: CoxResult | None
    status: str = "PASS"  # PASS | FAIL
    note: str = ""


# ---------------------------------------------------------------------------
# kubernetes-validate half
# ---------------------------------------------------------------------------

def load_kubernetes_validate():
    try:
        import kubernetes_validate
        from kubernetes_validate import utils
    except ImportError as exc:  # pragma: no cover - environment problem
        sys.exit(f"k8s_parity: cannot import kubernetes_validate ({exc}); "
                 "install it with `pip install kubernetes-validate`")
    # validate() re-reads and re-parses the 1.8 MB _definitions.json for every
    # object; the parsed schemas are never mutated, so memoising the loader is
    # safe and makes the in-process check an order of magnitude faster.
    if not hasattr(utils.schema_contents, "cache_info"):
        utils.schema_contents = functools.lru_cache(maxsize=None)(utils.schema_contents)
    return kubernetes_validate, utils


def resolve_k8s_version(utils, requested: str | None) -> str:
    """Return the shipped schema version to use for `requested`.

    kubernetes_validate compares versions as strings ("1.9" > "1.37"), so
    pick the newest shipped version whose (major, minor) is not newer than
    the requested one ourselves and hand validate() that exact version.
    """
    shipped = utils.all_versions()
    if requested is None:
        return shipped[-1]

    def mm(v: str) -> tuple[int, int]:
        m = re.match(r"^v?(\d+)\.(\d+)", v)
        if not m:
            raise ValueError(v)
        return int(m.group(1)), int(m.group(2))

    try:
        want = mm(requested)
    except ValueError:
        sys.stderr.write(f"k8s_parity: cannot parse --k8s-version {requested!r}\n")
        sys.exit(2)
    candidates = [v for v in shipped if mm(v) <= want]
    if not candidates or want > mm(shipped[-1]):
        sys.stderr.write(f"k8s_parity: kubernetes-validate has no schemas for {requested}; "
                         f"it ships {shipped[0]} .. {shipped[-1]}\n")
        sys.exit(2)
    return candidates[-1]


def first_line(text: str) -> str:
    text = str(text).strip()
    return text.splitlines()[0] if text else ""


def kv_check(kv, utils, path: Path, version: str) -> KvResult:
    try:
        docs = utils.resources_from_file(str(path))
    except SystemExit as exc:  # the loader reports parse errors this way
        msg = str(exc.code) if exc.code is not None else "unparsable"
        msg = re.sub(r"^Couldn't parse YAML from file .*?: ", "", msg)
        return KvResult(REJECT, 0, "YAML parse error: " + first_line(msg))
    except Exception as exc:  # e.g. undecodable bytes
        return KvResult(REJECT, 0, f"cannot read: {type(exc).__name__}: {first_line(exc)}")

    errors: list[str] = []
    for index, doc in enumerate(docs):
        where = f"doc {index + 1}"
        if isinstance(doc, dict):
            kind = doc.get("kind")
            meta = doc.get("metadata")
            name = meta.get("name") if isinstance(meta, dict) else None
            where = f"doc {index + 1} ({kind}/{name})"
        try:
            kv.validate(doc, version, True)
        except kv.ValidationError as exc:
            pointer = ".".join(str(p) for p in exc.path) or "<root>"
            errors.append(f"{where}: {pointer}: {first_line(exc.message)}")
            continue
        except kv.SchemaNotFoundError as exc:
            errors.append(f"{where}: no official schema for kind {exc.kind!r} "
                          f"apiVersion {exc.api_version!r} (CLI only warns; counted as rejection)")
            continue
        except kv.InvalidSchemaError as exc:
            sys.stderr.write(f"k8s_parity: kubernetes-validate schema is broken: {exc.message}\n")
            sys.exit(2)
        except Exception as exc:  # TypeError (not a mapping), KeyError (no apiVersion/kind), ...
            detail = f"{type(exc).__name__}: {first_line(exc)}"
            if isinstance(exc, TypeError) and not isinstance(doc, dict):
                detail = f"document is a {type(doc).__name__}, not a mapping"
            elif isinstance(exc, KeyError):
                detail = f"missing {exc.args[0]}"
            errors.append(f"{where}: could not be validated: {detail}")
            continue
        # The CLI then prints "kind/metadata.name"; without a name it crashes
        # with exit status 2, so the file counts as rejected.
        try:
            utils.kn(doc)
        except Exception as exc:
            errors.append(f"{where}: passed the schema but has no metadata.name "
                          f"(CLI exits 2: {type(exc).__name__} {first_line(exc)})")
    if errors:
        return KvResult(REJECT, len(docs), errors[0], errors)
    return KvResult(ACCEPT, len(docs), "" if docs else "no objects (empty file)")


# ---------------------------------------------------------------------------
# coxswain half
# ---------------------------------------------------------------------------

def check_cox_json(payload: Any, exit_code: int) -> str | None:
    """Return a description of what is wrong with coxswain's JSON, or None."""
    if not isinstance(payload, dict):
        return f"stdout JSON is a {type(payload).__name__}, not an object"
    for key, typ in (("valid", bool), ("files", int), ("objects", int), ("errors", list)):
        if key not in payload:
            return f"stdout JSON lacks {key!r}"
        value = payload[key]
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            return f"stdout JSON {key!r} is {type(value).__name__}, expected {typ.__name__}"
    for i, err in enumerate(payload["errors"]):
        if not isinstance(err, dict):
            return f"errors[{i}] is not an object"
        for key, typ in ERROR_KEYS.items():
            if key not in err:
                return f"errors[{i}] lacks {key!r}"
            value = err[key]
            if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
                return f"errors[{i}].{key} is {type(value).__name__}, expected {typ.__name__}"
    if payload["valid"] != (exit_code == 0):
        return f"exit status {exit_code} disagrees with \"valid\": {json.dumps(payload['valid'])}"
    if not payload["valid"] and not payload["errors"]:
        return "\"valid\": false with an empty \"errors\" list"
    if payload["valid"] and payload["errors"]:
        return "\"valid\": true but \"errors\" is not empty"
    return None


def format_cox_error(err: dict[str, Any]) -> str:
    loc = f"{err.get('line')}:{err.get('column')}"
    pointer = err.get("pointer") or "<root>"
    return f"{loc} {pointer}: {first_line(err.get('reason', ''))} [{err.get('code')}]"


def cox_check(binary: str, path: Path, timeout: float) -> CoxResult:
    cmd = [binary, "validate", str(path), "--output", "json"]
    env = dict(os.environ, NO_COLOR="1")
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return CoxResult(ERROR, None, detail=f"timed out after {timeout:g}s",
                         seconds=time.perf_counter() - started)
    except OSError as exc:
        return CoxResult(ERROR, None, detail=f"cannot run: {exc}",
                         seconds=time.perf_counter() - started)
    seconds = time.perf_counter() - started
    stderr = proc.stderr.decode("utf-8", "replace").strip()
    stderr_tail = first_line(stderr.splitlines()[-1]) if stderr else ""
    rc = proc.returncode
    if rc not in (0, 1):
        if rc == 2:
            what = "exit 2 (usage/I-O error)"
        elif rc < 0:
            what = f"killed by signal {-rc}"
        else:
            what = f"unexpected exit status {rc}"
        return CoxResult(ERROR, rc, detail=what + (f": {stderr_tail}" if stderr_tail else ""),
                         seconds=seconds)
    try:
        payload = json.loads(proc.stdout.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return CoxResult(ERROR, rc, detail=f"stdout is not JSON ({exc})", seconds=seconds)
    problem = check_cox_json(payload, rc)
    if problem:
        return CoxResult(ERROR, rc, detail="malformed output: " + problem, seconds=seconds)
    errors = payload["errors"]
    result = CoxResult(ACCEPT if rc == 0 else REJECT, rc, objects=payload["objects"],
                       errors=errors, seconds=seconds)
    if errors:
        result.detail = format_cox_error(errors[0])
        if len(errors) > 1:
            result.detail += f" (+{len(errors) - 1} more)"
    if payload["files"] != 1:
        result.detail = (result.detail + "; " if result.detail else "") + \
            f"reports files={payload['files']} for one file"
    return result


# ---------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------

def deliberate_key(rel: str, basename_counts: dict[str, int]) -> str | None:
    if rel in DELIBERATE:
        return rel
    base = rel.rsplit("/", 1)[-1]
    if base in DELIBERATE and basename_counts.get(base, 0) == 1:
        return base
    return None


def judge(row: Row, deliberate_reason: str | None) -> None:
    kv, cx = row.kubernetes_validate, row.coxswain
    assert cx is not None
    notes: list[str] = []
    fail = False

    if cx.verdict == ERROR:
        row.status, row.note = "FAIL", "coxswain error: " + cx.detail
        return
    if kv.verdict == REJECT and cx.verdict == ACCEPT:
        fail = True
        notes.append("kubernetes-validate rejects, coxswain accepts: " + kv.detail)
    elif kv.verdict == ACCEPT and cx.verdict == REJECT:
        if row.corpus == "valid":
            fail = True
            notes.append("valid-corpus file rejected by coxswain: " + cx.detail)
        elif deliberate_reason is None:
            fail = True
            notes.append("coxswain is stricter but the file is not in DELIBERATE: " + cx.detail)
        else:
            notes.append("stricter (deliberate): " + deliberate_reason)
    else:
        if deliberate_reason is not None:
            fail = True
            notes.append("stale DELIBERATE entry: both " + ("accept" if kv.verdict == ACCEPT else "reject"))
        if kv.verdict == REJECT:
            notes.append("both reject: " + kv.detail)
        elif cx.objects != kv.objects:
            fail = True
            notes.append(f"object count differs: kubernetes-validate {kv.objects}, coxswain {cx.objects}")

    if row.corpus == "valid":
        if kv.verdict == REJECT:
            fail = True
            notes.insert(0, "valid-corpus file rejected by kubernetes-validate")
        if deliberate_reason is not None:
            fail = True
            notes.append("valid-corpus files must not be listed in DELIBERATE")
    elif row.corpus == "invalid" and cx.verdict == ACCEPT and kv.verdict == ACCEPT:
        fail = True
        notes.append("invalid-corpus file accepted by both: its defect is not detected")

    if cx.detail and cx.verdict == ACCEPT:
        notes.append("coxswain: " + cx.detail)
    row.status = "FAIL" if fail else "PASS"
    row.note = "; ".join(notes)


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------

def kv_cell(r: KvResult) -> str:
    return {ACCEPT: "accepted", REJECT: "rejected"}.get(r.verdict, "-")


def cox_cell(r: CoxResult | None) -> str:
    if r is None:
        return "-"
    return {ACCEPT: "accepted", REJECT: "rejected"}.get(r.verdict, "ERROR")


def print_table(rows: list[Row], width: int) -> None:
    headers = ("file", "kubernetes-validate", "coxswain", "result", "note")
    cells = [(r.file, kv_cell(r.kubernetes_validate), cox_cell(r.coxswain), r.status, r.note)
             for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers[:-1])]
    used = sum(widths) + 2 * len(widths)
    note_width = max(20, width - used)

    def line(values):
        head = "  ".join(v.ljust(w) for v, w in zip(values[:-1], widths))
        note = values[-1]
        if len(note) > note_width:
            note = note[: note_width - 1] + "…"
        return (head + "  " + note).rstrip()

    print(line(headers))
    print(line(tuple("-" * w for w in widths) + ("-" * min(note_width, 4),)))
    for c in cells:
        print(line(c))


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Prove parity between `coxswain validate` and kubernetes-validate --strict.")
    parser.add_argument("--coxswain", required=True, metavar="PATH",
                        help="path to the coxswain binary")
    parser.add_argument("--json", action="store_true",
                        help="print results as JSON instead of a table (summary goes to stderr)")
    parser.add_argument("--k8s-version", metavar="V",
                        help="Kubernetes schema version (default: newest kubernetes-validate ships)")
    parser.add_argument("--testdata", metavar="DIR", default=str(DEFAULT_TESTDATA),
                        help="directory holding valid/ and invalid/ (default: schema/testdata)")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1),
                        help="coxswain processes to run at once (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds allowed per coxswain run (default: %(default)s)")
    args = parser.parse_args()

    binary = args.coxswain
    resolved = shutil.which(binary) if os.sep not in binary else binary
    if not resolved or not os.path.isfile(resolved) or not os.access(resolved, os.X_OK):
        sys.stderr.write(f"k8s_parity: coxswain binary {binary!r} not found or not executable\n")
        return 2
    binary = os.path.abspath(resolved)

    kv, utils = load_kubernetes_validate()
    version = resolve_k8s_version(utils, args.k8s_version)

    testdata = Path(args.testdata).resolve()
    files: list[tuple[str, Path]] = []
    skipped: list[str] = []
    counts: dict[str, int] = {}
    for corpus in CORPORA:
        root = testdata / corpus
        found = 0
        if root.is_dir():
            for p in sorted(root.rglob("*")):
                if not p.is_file():
                    continue
                rel = p.relative_to(testdata).as_posix()
                if p.suffix.lower() in EXTENSIONS:
                    files.append((corpus, p))
                    found += 1
                elif not p.name.lower().startswith("readme"):
                    skipped.append(rel)
        counts[corpus] = found
        if not root.is_dir():
            sys.stderr.write(f"k8s_parity: {corpus} corpus: 0 files ({root} does not exist)\n")
        else:
            sys.stderr.write(f"k8s_parity: {corpus} corpus: {found} files\n")
    for rel in skipped:
        sys.stderr.write(f"k8s_parity: skipping {rel} (not .yaml/.yml/.json)\n")
    if counts.get("valid", 0) == 0:
        sys.stderr.write(f"k8s_parity: no valid corpus under {testdata / 'valid'}\n")
        return 2

    basename_counts: dict[str, int] = {}
    for _, p in files:
        basename_counts[p.name] = basename_counts.get(p.name, 0) + 1

    # (a) kubernetes-validate, in-process.
    rows: list[Row] = []
    kv_started = time.perf_counter()
    kv_objects = 0
    for corpus, p in files:
        res = kv_check(kv, utils, p, version)
        kv_objects += res.objects
        rows.append(Row(p.relative_to(testdata).as_posix(), corpus, res, None))
    kv_seconds = time.perf_counter() - kv_started

    # (b) coxswain, one process per file.
    cox_started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(cox_check, binary, p, args.timeout) for _, p in files]
        for row, fut in zip(rows, futures):
            row.coxswain = fut.result()
    cox_seconds = time.perf_counter() - cox_started

    used_keys: set[str] = set()
    for row in rows:
        key = deliberate_key(row.file, basename_counts)
        if key is not None:
            used_keys.add(key)
        judge(row, DELIBERATE.get(key) if key is not None else None)

    # DELIBERATE entries that match no file are stale too.
    for key in sorted(set(DELIBERATE) - used_keys):
        base = key.rsplit("/", 1)[-1]
        why = ("ambiguous file name; use the corpus-relative path"
               if basename_counts.get(base, 0) > 1 else "no such file in the corpus")
        rows.append(Row(key, "deliberate", KvResult("-"), None, "FAIL",
                        f"stale DELIBERATE entry: {why}"))

    passed = sum(1 for r in rows if r.status == "PASS")
    failed = len(rows) - passed
    rate = kv_objects / kv_seconds if kv_seconds > 0 else float("inf")
    timing = (f"kubernetes-validate {kv.__version__} --strict (schemas {version}): "
              f"{kv_objects} objects in {len(files)} files, {kv_seconds:.2f}s ({rate:.0f} objects/s); "
              f"coxswain: {len(files)} runs in {cox_seconds:.2f}s")
    summary = f"parity: {passed} passed, {failed} failed"

    if args.json:
        out = {
            "kubernetes_validate": {"version": kv.__version__, "schemas": version, "strict": True},
            "coxswain": binary,
            "testdata": str(testdata),
            "corpora": counts,
            "timing": {"kubernetes_validate_seconds": round(kv_seconds, 4),
                       "kubernetes_validate_objects": kv_objects,
                       "coxswain_seconds": round(cox_seconds, 4)},
            "results": [
                {
                    "file": r.file,
                    "corpus": r.corpus,
                    "status": r.status,
                    "note": r.note,
                    "kubernetes_validate": asdict(r.kubernetes_validate),
                    "coxswain": asdict(r.coxswain) if r.coxswain else None,
                }
                for r in rows
            ],
            "passed": passed,
            "failed": failed,
        }
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
        sys.stdout.flush()
        sys.stderr.write(timing + "\n" + summary + "\n")
    else:
        width = shutil.get_terminal_size((160, 24)).columns
        print_table(rows, max(width, 120))
        print()
        print(timing)
        print(summary)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        sys.exit(1)
