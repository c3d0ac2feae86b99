"""The seed rule's metadata, in one place.

Elastic ships a detection rule as data: its logic next to its id, name, severity, risk score and
MITRE mapping. Everything in enumwatch that names the rule (the detector's defaults, a Finding's
``spec.rule`` block, the CLI's table header) reads it from here, so the rule is described once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MitreTechnique:
    """One MITRE ATT&CK technique (or sub-technique) and the tactic it serves."""

    tactic_id: str
    tactic_name: str
    technique_id: str
    technique_name: str


@dataclass(frozen=True, slots=True)
class RuleMetadata:
    """Identity and scoring of a detection rule, as Elastic publishes it."""

    id: str
    name: str
    description: str
    severity: str
    risk_score: int
    max_alerts_per_run: int
    mitre: tuple[MitreTechnique, ...]
    references: tuple[str, ...]


SEED_RULE = RuleMetadata(
    id="2dd0d4fd-0cc9-4d18-8b46-1a507e28bbc0",
    name=(
        "Kubernetes Potential Endpoint Permission Enumeration Attempt by Anonymous User Detected"
    ),
    description=(
        "Detects potential endpoint enumeration attempts by an anonymous user: a series of failed "
        "API requests, on multiple endpoints, within a limited number of documents."
    ),
    severity="medium",
    risk_score=47,
    max_alerts_per_run=100,
    mitre=(
        MitreTechnique("TA0007", "Discovery", "T1613", "Container and Resource Discovery"),
        MitreTechnique("TA0043", "Reconnaissance", "T1595.003", "Wordlist Scanning"),
    ),
    references=(
        "https://www.elastic.co/guide/en/security/current/prebuilt-rules.html",
        "https://attack.mitre.org/techniques/T1613/",
        "https://attack.mitre.org/techniques/T1595/003/",
    ),
)

#: Usernames the seed treats as anonymous (plus a missing, null or empty username).
SEED_USERNAMES: tuple[str, ...] = ("system:anonymous", "system:unauthenticated")
#: Audit levels the seed keeps. ``ResponseComplete`` is a *stage* name the seed lists as a level;
#: it is kept for fidelity (it never matches a real event's ``level``).
SEED_LEVELS: tuple[str, ...] = ("RequestResponse", "ResponseComplete", "Request")
