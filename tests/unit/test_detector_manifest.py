"""Detector manifests: one loader, so `scan --detector` and `tail --filter-detectors` agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from enumwatch.api.manifest import ManifestError, load_detector, load_detectors
from enumwatch.api.spec import DetectorSpec, MatchSpec
from enumwatch.cli.main import main

DETECTOR = """\
apiVersion: enumwatch.io/v1alpha1
kind: EnumerationDetector
metadata:
  name: {name}
spec:
  match:
    usernames: [{user}]
"""
GOOD = "apiVersion: enumwatch.io/v1alpha1"


def _write(tmp_path: Path, text: str, name: str = "detector.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_detector_of_a_file_in_order_other_kinds_passed_over(tmp_path: Path) -> None:
    listed = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}},
            {"apiVersion": "enumwatch.io/v1alpha1", "kind": "EnumerationDetector",
             "spec": {"match": {"usernames": ["c"]}}},
        ],
    }
    text = "\n---\n".join(
        [
            DETECTOR.format(name="a", user="a"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: n}\n",
            DETECTOR.format(name="b", user="b"),
            json.dumps(listed),
            "apiVersion: enumwatch.io/v1alpha1\nkind: EnumerationDetector\nspec:\n",
        ]
    )
    specs = load_detectors(str(_write(tmp_path, text)))
    assert [s.match.usernames for s in specs] == [["a"], ["b"], ["c"], list(MatchSpec().usernames)]
    assert specs[3] == DetectorSpec()


def test_a_json_manifest_loads(tmp_path: Path) -> None:
    manifest = {
        "apiVersion": "enumwatch.io/v1alpha1",
        "kind": "EnumerationDetector",
        "metadata": {"name": "j"},
        "spec": {"riskScore": 73},
    }
    path = _write(tmp_path, json.dumps(manifest), "detector.json")
    assert load_detector(str(path)).risk_score == 73
    assert load_detectors(str(path)) == [load_detector(str(path))]


def test_a_file_without_detectors_holds_none(tmp_path: Path) -> None:
    path = _write(tmp_path, "apiVersion: v1\nkind: Namespace\nmetadata: {name: n}\n")
    assert load_detectors(str(path)) == []
    with pytest.raises(ManifestError) as exc:
        load_detector(str(path))
    assert str(exc.value) == (
        f"detector {path} holds no objects of kind EnumerationDetector; "
        "pass a manifest with exactly one"
    )


def _bad_manifests(path: Path) -> list[tuple[str, str]]:
    """(manifest text, the one-line message both commands give for it)."""
    one = DETECTOR.format(name="a", user="a")
    return [
        (
            one.replace("v1alpha1", "v9"),
            f"detector {path}: apiVersion is 'enumwatch.io/v9', expected "
            "'enumwatch.io/v1alpha1'; fix the manifest and retry",
        ),
        (
            one.replace(GOOD, "apiVersion: v1"),
            f"detector {path}: apiVersion is 'v1', expected 'enumwatch.io/v1alpha1'; "
            "fix the manifest and retry",
        ),
        (
            one.replace("usernames: [a]", "levels: [Everything]"),
            f"invalid detector {path}: spec.match.levels[0]: Input should be 'None', 'Metadata', "
            "'Request', 'RequestResponse' or 'ResponseComplete' (got 'Everything'); "
            "fix the manifest and retry",
        ),
        (
            one.replace("spec:\n  match:\n    usernames: [a]\n", "spec: [1]\n"),
            f"detector {path}: spec must be a mapping; fix the manifest and retry",
        ),
        (
            "spec: [unclosed",
            f"detector {path} is not valid YAML at line 1; fix the manifest and retry",
        ),
    ]


def _tail(tmp_path: Path, manifest: Path) -> subprocess.CompletedProcess[str]:
    """Start `enumwatch tail --filter-detectors MANIFEST` (JSON logs) and wait for it to exit."""
    return subprocess.run(
        [
            sys.executable, "-m", "enumwatch", "tail",
            "--path", str(tmp_path / "audit.log"),
            "--checkpoint", str(tmp_path / "tail.checkpoint"),
            "--forward", "http://127.0.0.1:9/ingest",
            "--filter-detectors", str(manifest),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "case",
    range(5),
    ids=["apiVersion-v9", "apiVersion-v1", "invalid-spec", "spec-list", "not-yaml"],
)
def test_scan_and_tail_refuse_a_bad_manifest_with_the_same_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: int
) -> None:
    path = tmp_path / "detector.yaml"
    manifest, message = _bad_manifests(path)[case]
    path.write_text(manifest)
    log = _write(tmp_path, "", "audit.log")

    with pytest.raises(ManifestError) as exc:
        load_detectors(str(path))
    assert str(exc.value) == message

    assert main(["scan", str(log), "--detector", str(path)]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"enumwatch scan: {message}\n")

    tail = _tail(tmp_path, path)
    assert tail.returncode == 2
    assert tail.stdout == ""
    lines = [json.loads(line) for line in tail.stderr.splitlines()]
    assert [(r["level"], r["msg"]) for r in lines] == [
        ("error", f"cannot start the tailer: {message}")
    ]


def test_tail_refuses_files_without_detectors(tmp_path: Path) -> None:
    empty = _write(tmp_path, "apiVersion: v1\nkind: Namespace\nmetadata: {name: n}\n")
    tail = _tail(tmp_path, empty)
    assert tail.returncode == 2
    assert [json.loads(line)["msg"] for line in tail.stderr.splitlines()] == [
        f"cannot start the tailer: no EnumerationDetector found in {empty}"
    ]
