//! `deploy/` validates offline: the Kubernetes manifests against the core schemas and
//! the RoleBasedGroup CRD (`../shared/k8s/`, or `$TIERKV_RBG_CRD`), their tierkv
//! configurations with this build's `tierkv config show`, the Grafana dashboard's
//! metrics against what tierkv exports, and the Dockerfiles
//! (`deploy/tests/validate_manifests.py`; `scripts/test` installs kubernetes-validate).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("engine/cli/ is two levels below the repository")
        .to_path_buf()
}

#[test]
fn manifests_dashboard_and_dockerfiles_validate() {
    let crd = std::env::var_os("TIERKV_RBG_CRD").map_or_else(
        || repo().join("../shared/k8s/workloads.x-k8s.io_rolebasedgroups.yaml"),
        PathBuf::from,
    );
    // Without the CRD (a checkout without ../shared) the RoleBasedGroups are still
    // checked — their pod templates against the core schemas, the topology — and the
    // script says that their own schema was not.
    let crd_arg = if crd.exists() {
        crd.into_os_string()
    } else {
        eprintln!(
            "no RoleBasedGroup CRD at {}: its schema is not checked",
            crd.display()
        );
        "-".into()
    };
    let out = Command::new("python3")
        .arg(repo().join("deploy/tests/validate_manifests.py"))
        .arg(env!("CARGO_BIN_EXE_tierkv"))
        .arg(&crd_arg)
        .output()
        .expect("run python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "deploy/ does not validate:\n{text}");
    assert!(text.contains("0 problems"), "{text}");
}
