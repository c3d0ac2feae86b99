"""The RBAC posture without a cluster: bindings and roles in, what anonymous clients get out."""

from __future__ import annotations

from typing import Any

from enumwatch.api.detector_status import AnonymousBinding, Posture
from enumwatch.rbac_posture import (
    BindingKind,
    anonymous_binding,
    describe,
    grants,
    is_default,
    posture,
    verdict,
)

PUBLIC_INFO_RULES = [
    {"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"],
     "verbs": ["get"]}
]
CM_READER = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]


def binding(
    kind: BindingKind,
    name: str,
    role: tuple[str, str],
    *subjects: tuple[str, str],
    namespace: str | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role[0], "name": role[1]},
        "subjects": [
            {"kind": k, "name": n, **({"apiGroup": "rbac.authorization.k8s.io"})}
            for k, n in subjects
        ],
    }


def test_only_bindings_naming_anonymous_subjects_are_kept() -> None:
    mixed = binding(
        "ClusterRoleBinding", "system:public-info-viewer",
        ("ClusterRole", "system:public-info-viewer"),
        ("Group", "system:authenticated"), ("Group", "system:unauthenticated"),
    )
    ref = anonymous_binding("ClusterRoleBinding", mixed)
    assert ref is not None and ref.subjects == ("system:unauthenticated",)
    assert ref.key == "ClusterRoleBinding/system:public-info-viewer"
    admins = binding("ClusterRoleBinding", "admins", ("ClusterRole", "cluster-admin"),
                     ("Group", "system:masters"))
    assert anonymous_binding("ClusterRoleBinding", admins) is None
    # A ServiceAccount that happens to be called system:anonymous is not the anonymous user.
    sa = binding("RoleBinding", "x", ("Role", "r"), ("ServiceAccount", "system:anonymous"),
                 namespace="ns")
    assert anonymous_binding("RoleBinding", sa) is None


def test_the_defaults_are_not_reported_unless_their_role_was_widened() -> None:
    public = anonymous_binding(
        "ClusterRoleBinding",
        binding("ClusterRoleBinding", "system:public-info-viewer",
                ("ClusterRole", "system:public-info-viewer"),
                ("Group", "system:unauthenticated")),
    )
    assert public is not None
    assert is_default(public, PUBLIC_INFO_RULES)
    assert not is_default(public, PUBLIC_INFO_RULES + CM_READER)  # tampered role: reported
    assert not is_default(public, None)
    kubeadm = anonymous_binding(
        "RoleBinding",
        binding("RoleBinding", "kubeadm:bootstrap-signer-clusterinfo",
                ("Role", "kubeadm:bootstrap-signer-clusterinfo"),
                ("User", "system:anonymous"), namespace="kube-public"),
    )
    assert kubeadm is not None
    cluster_info = [{"apiGroups": [""], "resources": ["configmaps"],
                     "resourceNames": ["cluster-info"], "verbs": ["get"]}]
    assert is_default(kubeadm, cluster_info)
    assert not is_default(kubeadm, CM_READER)


def test_posture_lists_what_each_binding_grants_sorted_and_capped() -> None:
    refs = [
        anonymous_binding(
            "RoleBinding",
            binding("RoleBinding", f"anon-{i:02}", ("ClusterRole", "view"),
                    ("User", "system:anonymous"), namespace="apps"),
        )
        for i in range(25)
    ]
    wide = anonymous_binding(
        "ClusterRoleBinding",
        binding("ClusterRoleBinding", "anon-cm", ("ClusterRole", "cm-reader"),
                ("User", "system:anonymous"), ("Group", "system:unauthenticated")),
    )
    assert wide is not None and all(r is not None for r in refs)
    found = posture([(wide, CM_READER)] + [(r, None) for r in refs if r is not None])
    assert found.omitted == 6 and len(found.anonymous_bindings) == 20
    assert found.anonymous_bindings[0] == AnonymousBinding(
        kind="ClusterRoleBinding",
        name="anon-cm",
        role="ClusterRole/cm-reader",
        subjects=["system:anonymous", "system:unauthenticated"],
        grants=["get,list configmaps"],
    )
    assert [b.name for b in found.anonymous_bindings[1:3]] == ["anon-00", "anon-01"]
    assert describe(found.anonymous_bindings[1]) == (
        "RoleBinding apps/anon-00 binds system:anonymous to ClusterRole/view: nothing yet "
        "(the role is missing)"
    )
    status, reason, message = verdict(found)
    assert (status, reason) == ("False", "AnonymousBindingsFound")
    assert message.startswith(
        "26 binding(s) grant anonymous clients more than the defaults; remove them or their "
        "anonymous subjects unless intended: ClusterRoleBinding anon-cm binds system:anonymous, "
        "system:unauthenticated to ClusterRole/cm-reader: get,list configmaps | "
    )
    assert message.endswith(" and 21 more")


def test_grants_read_like_kubectl_describe() -> None:
    assert grants(
        [
            {"apiGroups": ["", "apps"], "resources": ["pods", "deployments"],
             "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a", "b"],
             "verbs": ["get"]},
            {"nonResourceURLs": ["/metrics"], "verbs": ["get"]},
        ]
    ) == [
        "get,list,watch pods,deployments,apps/pods,apps/deployments",
        "get configmaps (names a,b)",
        "get /metrics",
    ]


def test_verdicts() -> None:
    assert verdict(None) == (
        "Unknown", "NotListedYet", "the RBAC bindings have not been listed yet"
    )
    assert verdict(Posture()) == (
        "True",
        "NoAnonymousBindings",
        "no binding grants system:anonymous or system:unauthenticated more than the cluster's "
        "defaults",
    )
