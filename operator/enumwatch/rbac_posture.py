"""The cluster's RBAC posture towards anonymous clients: which bindings let them in.

An enumeration is an attempt; a binding that grants ``system:anonymous`` or
``system:unauthenticated`` read on configmaps is the door it is looking for. The rule cannot see
that, the API can: this module reads ClusterRoleBindings and RoleBindings (and the rules of the
roles they bind) and says which grant anonymous clients anything beyond the cluster's defaults.

The defaults, as a fresh kube-apiserver (and kubeadm) define them:

* ``system:public-info-viewer`` (``/version``, ``/healthz``, ``/livez``, ``/readyz`` for
  ``system:unauthenticated``) and ``system:discovery`` (which bound ``system:unauthenticated``
  before Kubernetes 1.14 and still does on upgraded clusters): default only while the
  ClusterRole they bind grants non-resource URLs alone, so a tampered role is still reported;
* kubeadm's ``kube-public/kubeadm:bootstrap-signer-clusterinfo``: ``get`` on the ``cluster-info``
  ConfigMap only, for joining nodes.

Pure: objects in, a :class:`~enumwatch.api.detector_status.Posture` out; the shell does the reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from enumwatch.api.detector_status import MAX_ANONYMOUS_BINDINGS, AnonymousBinding, Posture

BindingKind = Literal["ClusterRoleBinding", "RoleBinding"]
#: The subjects that mean "anyone": the anonymous user and the group every anonymous request has.
ANONYMOUS_SUBJECTS = frozenset({"system:anonymous", "system:unauthenticated"})
#: ClusterRoles that anonymous clients are bound to by default (when they grant only URLs).
PUBLIC_ROLES = frozenset({"system:public-info-viewer", "system:discovery"})
#: kubeadm's RoleBinding (and Role) that lets joining nodes read the cluster-info ConfigMap.
KUBEADM_CLUSTER_INFO = ("kube-public", "kubeadm:bootstrap-signer-clusterinfo")
#: Condition reasons.
NONE_FOUND = "NoAnonymousBindings"
FOUND = "AnonymousBindingsFound"
WAITING = "NotListedYet"
#: The Warning Event's reason when a binding appears.
REASON_FOUND = "AnonymousBindingFound"

Rules = list[dict[str, Any]]


@dataclass(frozen=True)
class BindingRef:
    """A binding with anonymous subjects: where it is, the role it binds, who it names."""

    kind: BindingKind
    namespace: str | None
    name: str
    role_kind: str
    role_name: str
    subjects: tuple[str, ...]

    @property
    def key(self) -> str:
        """``ClusterRoleBinding/<name>`` or ``RoleBinding/<namespace>/<name>``."""
        if self.namespace is None:
            return f"{self.kind}/{self.name}"
        return f"{self.kind}/{self.namespace}/{self.name}"


def anonymous_binding(kind: BindingKind, obj: dict[str, Any]) -> BindingRef | None:
    """``obj`` (a ClusterRoleBinding or RoleBinding) if it names an anonymous subject."""
    subjects = sorted(
        {
            str(s.get("name"))
            for s in obj.get("subjects") or ()
            if isinstance(s, dict)
            and s.get("kind") in ("User", "Group")
            and s.get("name") in ANONYMOUS_SUBJECTS
        }
    )
    if not subjects:
        return None
    meta, role = obj.get("metadata") or {}, obj.get("roleRef") or {}
    return BindingRef(
        kind=kind,
        namespace=str(meta.get("namespace")) if kind == "RoleBinding" else None,
        name=str(meta.get("name") or ""),
        role_kind=str(role.get("kind") or ""),
        role_name=str(role.get("name") or ""),
        subjects=tuple(subjects),
    )


def grants(rules: Rules) -> list[str]:
    """One line per rule: ``verbs resources`` (group-qualified, with resourceNames) or
    ``verbs URLs``."""
    lines = []
    for rule in rules:
        verbs = ",".join(rule.get("verbs") or ())
        urls = rule.get("nonResourceURLs") or ()
        if urls:
            lines.append(f"{verbs} {','.join(urls)}")
            continue
        groups = rule.get("apiGroups") or [""]
        resources = [
            f"{group}/{resource}" if group else resource
            for group in groups
            for resource in rule.get("resources") or ()
        ]
        names = rule.get("resourceNames") or ()
        lines.append(
            f"{verbs} {','.join(resources)}" + (f" (names {','.join(names)})" if names else "")
        )
    return lines


def is_default(ref: BindingRef, rules: Rules | None) -> bool:
    """Whether ``ref`` is one of the cluster's default anonymous bindings, unaltered."""
    if rules is None:
        return False
    if (
        ref.kind == "ClusterRoleBinding"
        and ref.role_kind == "ClusterRole"
        and ref.role_name in PUBLIC_ROLES
    ):
        return all(r.get("nonResourceURLs") and not r.get("resources") for r in rules)
    if (ref.kind, ref.namespace, ref.name) == ("RoleBinding", *KUBEADM_CLUSTER_INFO):
        return ref.role_name == KUBEADM_CLUSTER_INFO[1] and all(
            r.get("resources") == ["configmaps"]
            and r.get("resourceNames") == ["cluster-info"]
            and set(r.get("verbs") or ()) <= {"get"}
            for r in rules
        )
    return False


def posture(bindings: list[tuple[BindingRef, Rules | None]]) -> Posture:
    """The Posture: every non-default anonymous binding with what it grants (``None`` rules:
    the role does not exist), sorted by kind, namespace and name, capped."""
    found = sorted(
        (
            AnonymousBinding(
                kind=ref.kind,
                namespace=ref.namespace,
                name=ref.name,
                role=f"{ref.role_kind}/{ref.role_name}",
                subjects=list(ref.subjects),
                grants=grants(rules or []),
            )
            for ref, rules in bindings
            if not is_default(ref, rules)
        ),
        key=lambda b: (b.kind, b.namespace or "", b.name),
    )
    return Posture(
        anonymousBindings=found[:MAX_ANONYMOUS_BINDINGS],
        omitted=max(0, len(found) - MAX_ANONYMOUS_BINDINGS),
    )


def describe(binding: AnonymousBinding) -> str:
    """A binding in words, for condition and Event messages."""
    where = f"{binding.namespace}/" if binding.namespace else ""
    what = "; ".join(binding.grants) if binding.grants else "nothing yet (the role is missing)"
    return (
        f"{binding.kind} {where}{binding.name} binds {', '.join(binding.subjects)} to "
        f"{binding.role}: {what}"
    )


def verdict(found: Posture | None) -> tuple[str, str, str]:
    """The RBACPosture condition: (status, reason, message)."""
    if found is None:
        return ("Unknown", WAITING, "the RBAC bindings have not been listed yet")
    bindings = found.anonymous_bindings
    if not bindings:
        return (
            "True",
            NONE_FOUND,
            "no binding grants system:anonymous or system:unauthenticated more than the "
            "cluster's defaults",
        )
    total, shown = len(bindings) + found.omitted, bindings[:5]
    more = f" and {total - len(shown)} more" if total > len(shown) else ""
    return (
        "False",
        FOUND,
        f"{total} binding(s) grant anonymous clients more than the defaults; remove them or "
        f"their anonymous subjects unless intended: "
        + " | ".join(describe(b) for b in shown)
        + more,
    )
