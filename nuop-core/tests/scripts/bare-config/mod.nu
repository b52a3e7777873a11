# `config` returns a bare record (no `| to yaml`), as scripts for the original often do.
def "main config" [] { { name: "bare-config", version: "v1", kind: "ConfigMap", requeue_after_noop: 77 } }
def "main reconcile" [] { exit 0 }
