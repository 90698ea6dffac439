#!/usr/bin/env python3
"""Parity between `coxswain validate` and the official Kubernetes schemas.

Usage:
    python3 tests/parity/k8s_parity.py --coxswain PATH_TO_BINARY
        [--json] [--k8s-version V] [--testdata DIR] [--jobs N] [--timeout S]

For every entry of schema/testdata/valid/ and schema/testdata/invalid/ --
a .yaml/.yml/.json file, or a folder directly under the corpus directory
(for checks that need several files); each entry is a self-contained tree
and one row of the table:

  (a) kubernetes-validate --strict judges it, in-process through its Python
      API (its own multi-document YAML loader, then
      kubernetes_validate.validate(doc, version, strict=True) per document).
      A folder is judged file by file over every .yaml/.yml/.json regular
      file below it, and is rejected if any file is; symlinks are never
      followed (coxswain refuses a link out of the tree and loads a link
      inside it under its target's own path), so only regular files count;
  (b) `<coxswain> validate <entry> --output json` judges it, a folder as one
      tree (exit 0 = valid, 1 = invalid, anything else = harness error).

Entries of invalid/ that schema/testdata/invalid/expected.tsv runs with
lowered limits (its optional 5th column) cannot fail through the CLI, which
always uses the default limits: when both tools accept such an entry the row
passes with a note, as its rejection is proven by
`cargo test -p coxswain-schema --test invalid_corpus`. Every other rule
still applies to them.

Rules (a row that breaks one is FAILED):
  * whatever kubernetes-validate rejects, coxswain must reject;
  * whatever coxswain rejects and kubernetes-validate accepts ("coxswain is
    stricter") must be listed in DELIBERATE with the reason;
  * a DELIBERATE entry whose file is not such a case (or does not exist) is
    stale;
  * entries in valid/ must be accepted by both, entries in invalid/ must be
    rejected by coxswain (except as above for lowered limits);
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
# Key: the entry's name inside schema/testdata/ -- either its bare file or
# folder name ("dup-key.yaml", "cross-file-duplicate") or, if that is
# ambiguous, its corpus-relative path ("invalid/dup-key.yaml"). Value: WHY
# coxswain rejects what the schemas accept. Legitimate reasons include:
#   - semantic checks Kubernetes only makes at admission/apply or run time
#     (DNS-1123 names, port ranges, limits >= requests, selector/template
#     label match, enum values the schema types only as strings, quantity
#     syntax, base64 in Secret data, ...);
#   - references across objects (ConfigMap/Secret/Namespace/HPA target must
#     exist in the same tree), uniqueness of names;
#   - coxswain's narrower scope (unsupported kinds or fields, status in Git);
#   - YAML that coxswain refuses on purpose (tags, duplicate keys, aliases,
#     anchors/merge keys, YAML 1.1 literals) while PyYAML silently accepts.
# Only entries of invalid/ belong here; a valid/ entry must be accepted by both.
# An entry that is not (or no longer) a "coxswain is stricter" case FAILS as
# stale, so this list cannot rot.
# ---------------------------------------------------------------------------
DELIBERATE: dict[str, str] = {
    # parse
    "dup-key.yaml":
        "parse: a repeated mapping key is refused; PyYAML silently keeps the last value",
    "tag-str.yaml":
        "parse: explicit YAML tags are refused; PyYAML resolves the standard !!str tag",
    "json-trailing-comma.json":
        "parse: a .json manifest must be JSON, as kubectl decodes it; PyYAML reads it as YAML, which allows a trailing comma",

    # limit
    "symlink-escape":
        "limit: a symlink out of the tree is refused; kubernetes-validate is given only the regular files",

    # kind
    "kind-unknown.yaml":
        "kind: coxswain's narrower scope: Ingress has an official schema but is not a kind coxswain runs",

    # schema
    "schema-container-missing-image.yaml":
        "schema: the OpenAPI schema leaves `image` optional for config management; the API server requires it in a pod",
    "schema-enum-image-pull-policy.yaml":
        "schema: the OpenAPI schema types imagePullPolicy as a plain string; the API server allows only Always, IfNotPresent, Never",
    "schema-enum-protocol-sctp.yaml":
        "schema: coxswain's narrower scope: its service proxy implements TCP and UDP only (Kubernetes also has SCTP)",
    "schema-enum-restart-policy.yaml":
        "schema: the OpenAPI schema types restartPolicy as a plain string; the API server allows only Always, OnFailure, Never",
    "schema-enum-service-loadbalancer.yaml":
        "schema: coxswain's narrower scope: only ClusterIP and NodePort Services are implemented",
    "schema-int32-out-of-range.yaml":
        "schema: int32 range is only an OpenAPI `format` hint to kubernetes-validate; the API server fails to decode the value",
    "schema-integer-written-as-decimal.yaml":
        "schema: 8080.0 is refused where an integer is required; JSON Schema counts it as one, and kubectl's YAML-to-JSON step would rewrite it as 8080",
    "schema-selector-operator-invalid.yaml":
        "schema: the OpenAPI schema types the selector operator as a plain string; the API server allows only In, NotIn, Exists, DoesNotExist",

    # semantic
    "cluster-scoped-with-namespace.yaml":
        "semantic: the API server refuses a namespace on a cluster-scoped object; the schema cannot say which kinds are cluster-scoped",
    "configmap-key-invalid.yaml":
        "semantic: ConfigMap key syntax is checked by the API server, not the OpenAPI schema",
    "configmap-key-in-data-and-binarydata.yaml":
        "semantic: the API server refuses a key in both data and binaryData, a cross-field rule the schema cannot express",
    "cronjob-name-too-long.yaml":
        "semantic: the API server limits CronJob names to 52 characters (Job name suffix); the schema has no length limits",
    "label-key-invalid.yaml":
        "semantic: label key syntax is checked by the API server, not the OpenAPI schema",
    "label-value-invalid-chars.yaml":
        "semantic: label value syntax is checked by the API server, not the OpenAPI schema",
    "label-value-too-long.yaml":
        "semantic: the 63-character label value limit is checked by the API server, not the OpenAPI schema",
    "name-not-dns1123.yaml":
        "semantic: Kubernetes checks DNS-1123 names in the API server, not in the OpenAPI schema",
    "namespace-name-invalid.yaml":
        "semantic: the API server requires a Namespace name to be a DNS-1123 label; the schema types it as a string",
    "service-name-starts-with-digit.yaml":
        "semantic: the API server requires a Service name to be an RFC 1035 label; the schema types it as a string",
    "env-var-name-invalid.yaml":
        "semantic: environment variable name syntax is checked by the API server, not the OpenAPI schema",
    "container-port-name-invalid.yaml":
        "semantic: IANA_SVC_NAME port-name syntax is checked by the API server, not the OpenAPI schema",
    "container-name-duplicate.yaml":
        "semantic: unique container names are checked by the API server; the schema cannot express uniqueness by a field",
    "container-port-name-duplicate.yaml":
        "semantic: unique container port names are checked by the API server; the schema cannot express uniqueness by a field",
    "service-port-name-duplicate.yaml":
        "semantic: unique Service port names are checked by the API server; the schema cannot express uniqueness by a field",
    "volume-name-duplicate.yaml":
        "semantic: unique volume names are checked by the API server; the schema cannot express uniqueness by a field",
    "volume-mount-path-duplicate.yaml":
        "semantic: unique mount paths are checked by the API server; the schema cannot express uniqueness by a field",
    "container-port-too-large.yaml":
        "semantic: the port range 1-65535 is checked by the API server; the schema only says int32",
    "container-port-zero.yaml":
        "semantic: the port range 1-65535 is checked by the API server; the schema only says int32",
    "service-nodeport-out-of-range.yaml":
        "semantic: the node port range 30000-32767 is checked by the API server; the schema only says int32",
    "job-completions-negative.yaml":
        "semantic: non-negative completions is checked by the API server; the schema only says int32",
    "job-parallelism-negative.yaml":
        "semantic: non-negative parallelism is checked by the API server; the schema only says int32",
    "hpa-min-above-max.yaml":
        "semantic: minReplicas <= maxReplicas is a cross-field rule of the API server the schema cannot express",
    "quantity-negative.yaml":
        "semantic: non-negative resource quantities are checked by the API server; the schema types a quantity as string-or-number",
    "quantity-syntax.yaml":
        "semantic: quantity syntax is parsed by the API server; the schema types a quantity as string-or-number",
    "requests-exceed-limits.yaml":
        "semantic: requests <= limits is a cross-field rule of the API server the schema cannot express",
    "resource-name-unsupported.yaml":
        "semantic: resource names are checked by the API server (\"gpu\" is neither standard nor a qualified extended resource)",
    "env-value-and-value-from.yaml":
        "semantic: value and valueFrom are mutually exclusive in the API server; the schema allows both",
    "probe-no-handler.yaml":
        "semantic: exactly one probe handler is an API-server rule the schema cannot express",
    "probe-two-handlers.yaml":
        "semantic: exactly one probe handler is an API-server rule the schema cannot express",
    "probe-port-name-unknown.yaml":
        "semantic: a named probe port must be a named port of the container; Kubernetes only finds out when the probe runs",
    "volume-two-sources.yaml":
        "semantic: one source per volume is an API-server rule the schema cannot express",
    "volume-mount-missing-volume.yaml":
        "semantic: a volumeMount must name a volume of the pod, a cross-field rule of the API server",
    "secret-data-not-base64.yaml":
        "semantic: base64 in Secret data is decoded by the API server; the schema types it as a string",
    "secret-tls-missing-key.yaml":
        "semantic: the keys a kubernetes.io/tls Secret needs are checked by the API server, not the schema",
    "selector-empty.yaml":
        "semantic: an empty workload selector is refused by the API server; the schema allows an empty object",
    "selector-mismatch.yaml":
        "semantic: \"selector does not match template labels\" is an API-server rule the schema cannot express",
    "service-nodeport-on-clusterip.yaml":
        "semantic: nodePort only with type NodePort is a cross-field rule of the API server",
    "strategy-rollingupdate-with-recreate.yaml":
        "semantic: rollingUpdate only with type RollingUpdate is a cross-field rule of the API server",
    "strategy-surge-and-unavailable-zero.yaml":
        "semantic: maxSurge and maxUnavailable both 0 is refused by the API server, a cross-field rule",
    "daemonset-strategy-recreate.yaml":
        "semantic: a DaemonSet updateStrategy type is RollingUpdate or OnDelete; the schema types it as a plain string",
    "deployment-restart-policy-never.yaml":
        "semantic: the API server allows only restartPolicy Always in a Deployment\"s template",
    "job-restart-policy-always.yaml":
        "semantic: the API server requires restartPolicy OnFailure or Never in a Job\"s template",
    "job-selector-without-manual-selector.yaml":
        "semantic: a Job selector needs manualSelector: true in the API server; the schema allows it alone",
    "toleration-exists-with-value.yaml":
        "semantic: no value with operator Exists is a cross-field rule of the API server",
    "cron-schedule-invalid.yaml":
        "semantic: cron syntax is parsed by the API server; the schema types schedule as a string",
    "cron-schedule-four-fields.yaml":
        "semantic: cron syntax is parsed by the API server; the schema types schedule as a string",
    "cron-timezone-invalid.yaml":
        "semantic: IANA time zones are checked by the API server; the schema types timeZone as a string",
    "status-in-git.yaml":
        "semantic: status is written by coxswain from what runs, never by Git (the schema allows it for API responses)",
    "system-field-creation-timestamp.yaml":
        "semantic: server-set metadata (creationTimestamp) must not be written in Git; the schema allows it for API responses",
    "system-field-resource-version.yaml":
        "semantic: server-set metadata (resourceVersion) must not be written in Git; the schema allows it for API responses",
    "system-field-uid.yaml":
        "semantic: server-set metadata (uid) must not be written in Git; the schema allows it for API responses",

    # reference
    "ref-configmap-key-missing.yaml":
        "reference: a referenced ConfigMap key must exist in the tree; Kubernetes only finds out at pod start",
    "ref-configmap-missing-env.yaml":
        "reference: a ConfigMap a pod needs must be in the tree; Kubernetes only finds out at pod start",
    "ref-configmap-missing-envfrom.yaml":
        "reference: a ConfigMap a pod needs must be in the tree; Kubernetes only finds out at pod start",
    "ref-configmap-missing-volume.yaml":
        "reference: a ConfigMap a pod needs must be in the tree; Kubernetes only finds out at pod start",
    "ref-hpa-target-missing.yaml":
        "reference: an HPA\"s scale target must be in the tree; Kubernetes only reports FailedGetScale at run time",
    "ref-namespace-not-declared.yaml":
        "reference: the namespace must be declared in the tree; schemas judge one object at a time",
    "ref-secret-missing.yaml":
        "reference: a Secret a pod needs must be in the tree; Kubernetes only finds out at pod start",
    "ref-secret-volume-item-key-missing.yaml":
        "reference: a referenced Secret key must exist in the tree; Kubernetes only finds out at pod start",

    # duplicate
    "duplicate-in-one-file.yaml":
        "duplicate: (kind, namespace, name) must be unique in the tree; schemas judge one object at a time",
    "cross-file-duplicate":
        "duplicate: (kind, namespace, name) must be unique across files; schemas judge one object at a time",
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


@dataclass
class Entry:
    """One row's input: a manifest file, or a folder judged as one tree."""
    corpus: str
    path: Path
    is_dir: bool = False
    # The regular manifest files kubernetes-validate judges (the file itself for a file).
    files: list[Path] = field(default_factory=list)
    # Symlinks inside a folder, which kubernetes-validate does not follow.
    symlinks: list[Path] = field(default_factory=list)


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


def kv_check_entry(kv, utils, entry: Entry, version: str) -> KvResult:
    """A file as kv_check does; a folder file by file, rejected if any file is."""
    if not entry.is_dir:
        return kv_check(kv, utils, entry.path, version)
    objects = 0
    errors: list[str] = []
    for p in entry.files:
        res = kv_check(kv, utils, p, version)
        objects += res.objects
        rel = p.relative_to(entry.path).as_posix()
        if res.verdict == REJECT:
            errors.extend(f"{rel}: {e}" for e in (res.errors or [res.detail]))
    if errors:
        return KvResult(REJECT, objects, errors[0], errors)
    return KvResult(ACCEPT, objects, "" if objects else "no objects (empty folder)")


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


def cox_check(binary: str, path: Path, timeout: float, expected_files: int = 1,
              is_dir: bool = False) -> CoxResult:
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
    if not is_dir and payload["files"] != 1:
        result.detail = (result.detail + "; " if result.detail else "") + \
            f"reports files={payload['files']} for one file"
    # A rejected folder may have been cut short by a limit before every file was read.
    if is_dir and rc == 0 and payload["files"] != expected_files:
        result.detail = (result.detail + "; " if result.detail else "") + \
            f"reports files={payload['files']} for a folder of {expected_files} manifest files"
    return result


# ---------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------

def collect_folder(corpus: str, folder: Path, testdata: Path, skipped: list[str]) -> Entry:
    """A folder entry: its regular manifest files and its symlinks, never following one."""
    entry = Entry(corpus, folder, is_dir=True)
    for dirpath, dirnames, filenames in os.walk(folder):  # os.walk does not follow links
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        here = Path(dirpath)
        for d in dirnames:
            if (here / d).is_symlink():
                entry.symlinks.append(here / d)
        for name in sorted(filenames):
            p = here / name
            if p.is_symlink():
                entry.symlinks.append(p)
            elif not p.is_file():
                continue
            elif p.suffix.lower() in EXTENSIONS:
                entry.files.append(p)
            elif not name.lower().startswith("readme") and name != ".coxswainignore":
                skipped.append(p.relative_to(testdata).as_posix())
    entry.files.sort()
    entry.symlinks.sort()
    return entry


def load_limit_overrides(table: Path) -> dict[str, str]:
    """Entries of invalid/expected.tsv run with lowered limits: entry -> "limit=value,..."."""
    out: dict[str, str] = {}
    try:
        text = table.read_text(encoding="utf-8")
    except OSError:
        return out
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) >= 5 and cols[4].strip():
            out[cols[0]] = cols[4].strip()
    return out


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


def judge(row: Row, deliberate_reason: str | None, limits: str | None = None) -> None:
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
        if limits is None:
            fail = True
            notes.append("invalid-corpus file accepted by both: its defect is not detected")
        else:
            notes.append(f"accepted with the default limits; rejected with {limits} "
                         "(expected.tsv, checked by the invalid_corpus test)")

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
    entries: list[Entry] = []
    skipped: list[str] = []
    counts: dict[str, int] = {}
    for corpus in CORPORA:
        root = testdata / corpus
        found = folders = 0
        if root.is_dir():
            for p in sorted(root.iterdir()):
                rel = p.relative_to(testdata).as_posix()
                if p.is_dir() and not p.is_symlink():
                    entry = collect_folder(corpus, p, testdata, skipped)
                    if entry.files or entry.symlinks:
                        entries.append(entry)
                        folders += 1
                    continue
                if not p.is_file():
                    continue
                if p.suffix.lower() in EXTENSIONS:
                    entries.append(Entry(corpus, p, files=[p]))
                    found += 1
                elif not p.name.lower().startswith("readme"):
                    skipped.append(rel)
        counts[corpus] = found + folders
        if not root.is_dir():
            sys.stderr.write(f"k8s_parity: {corpus} corpus: 0 files ({root} does not exist)\n")
        else:
            sys.stderr.write(f"k8s_parity: {corpus} corpus: {found} files, {folders} folders\n")
    for rel in skipped:
        sys.stderr.write(f"k8s_parity: skipping {rel} (not .yaml/.yml/.json)\n")
    for entry in entries:
        for link in entry.symlinks:
            sys.stderr.write(f"k8s_parity: {link.relative_to(testdata).as_posix()}: symlink, "
                             "not followed by kubernetes-validate (coxswain judges it)\n")
    if counts.get("valid", 0) == 0:
        sys.stderr.write(f"k8s_parity: no valid corpus under {testdata / 'valid'}\n")
        return 2
    limits = load_limit_overrides(testdata / "invalid" / "expected.tsv")

    basename_counts: dict[str, int] = {}
    for entry in entries:
        basename_counts[entry.path.name] = basename_counts.get(entry.path.name, 0) + 1

    # (a) kubernetes-validate, in-process.
    rows: list[Row] = []
    kv_started = time.perf_counter()
    kv_objects = 0
    kv_files = 0
    for entry in entries:
        res = kv_check_entry(kv, utils, entry, version)
        kv_objects += res.objects
        kv_files += len(entry.files)
        rows.append(Row(entry.path.relative_to(testdata).as_posix(), entry.corpus, res, None))
    kv_seconds = time.perf_counter() - kv_started

    # (b) coxswain, one process per entry.
    cox_started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(cox_check, binary, e.path, args.timeout, len(e.files), e.is_dir)
                   for e in entries]
        for row, fut in zip(rows, futures):
            row.coxswain = fut.result()
    cox_seconds = time.perf_counter() - cox_started

    used_keys: set[str] = set()
    for entry, row in zip(entries, rows):
        key = deliberate_key(row.file, basename_counts)
        if key is not None:
            used_keys.add(key)
        lowered = limits.get(entry.path.name) if entry.corpus == "invalid" else None
        judge(row, DELIBERATE.get(key) if key is not None else None, lowered)

    # DELIBERATE entries that match no file are stale too.
    for key in sorted(set(DELIBERATE) - used_keys):
        base = key.rsplit("/", 1)[-1]
        why = ("ambiguous name; use the corpus-relative path"
               if basename_counts.get(base, 0) > 1 else "no such entry in the corpus")
        rows.append(Row(key, "deliberate", KvResult("-"), None, "FAIL",
                        f"stale DELIBERATE entry: {why}"))

    passed = sum(1 for r in rows if r.status == "PASS")
    failed = len(rows) - passed
    rate = kv_objects / kv_seconds if kv_seconds > 0 else float("inf")
    timing = (f"kubernetes-validate {kv.__version__} --strict (schemas {version}): "
              f"{kv_objects} objects in {kv_files} files, {kv_seconds:.2f}s ({rate:.0f} objects/s); "
              f"coxswain: {len(entries)} runs in {cox_seconds:.2f}s")
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
