//! The Submariner broker, as a member cluster reaches it: where the credentials come from
//! (ServiceDiscovery, or a Secret holding a kubeconfig), what is refused in them, and the client.
//! exip-syncer syncs through it; `kubectl multivpc diagnose` reads the broker's GatewayExIps
//! through it, with the same credentials and the same refusals.

use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
};
use multivpc_api::{
    GatewayExIp,
    foreign::submariner::{
        DEFAULT_BROKER_NAMESPACE, SERVICE_DISCOVERY_NAME, SUBMARINER_NAMESPACE, ServiceDiscovery,
        ServiceDiscoverySpec,
    },
};
use serde_json::json;

/// Where the broker credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Submariner's `submariner-operator/service-discovery` (the default).
    ServiceDiscovery,
    /// A Secret `<namespace>/<name>` whose key `kubeconfig` holds a kubeconfig for the broker.
    Secret { namespace: String, name: String },
    /// Broker sync switched off.
    Disabled,
}

/// How to reach the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub source: Source,
    /// Broker namespace; otherwise ServiceDiscovery's brokerK8sRemoteNamespace, the
    /// kubeconfig context's namespace, or `submariner-k8s-broker`.
    pub namespace: Option<String>,
    /// `--allow-insecure-broker`: accept `http://` and unverified TLS (`brokerK8sInsecure`,
    /// `insecure-skip-tls-verify`). Off by default: the broker token would travel exposed.
    pub allow_insecure: bool,
}

impl std::str::FromStr for Source {
    type Err = String;

    /// `service-discovery`, `none`, or `secret:<namespace>/<name>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "service-discovery" => Ok(Self::ServiceDiscovery),
            "none" => Ok(Self::Disabled),
            _ => {
                let rest = s
                    .strip_prefix("secret:")
                    .ok_or_else(|| format!("invalid broker credentials source {s:?}"))?;
                let (namespace, name) = rest
                    .split_once('/')
                    .filter(|(a, b)| !a.is_empty() && !b.is_empty())
                    .ok_or_else(|| format!("expected secret:<namespace>/<name>, got {s:?}"))?;
                Ok(Self::Secret {
                    namespace: namespace.into(),
                    name: name.into(),
                })
            }
        }
    }
}

/// The `https://host:port` URL of a ServiceDiscovery's `brokerK8sApiServer`. `http://` only
/// when `allow_insecure`.
pub fn broker_url(api_server: &str, allow_insecure: bool) -> anyhow::Result<String> {
    let s = api_server.trim().trim_end_matches('/');
    if s.is_empty() {
        bail!("brokerK8sApiServer is empty");
    }
    if s.starts_with("http://") {
        if !allow_insecure {
            bail!(
                "the broker URL {s} is plain http (the token would travel in clear); refused without --allow-insecure-broker"
            );
        }
        tracing::warn!(
            url = s,
            "--allow-insecure-broker: talking to the broker over plain http"
        );
        return Ok(s.to_owned());
    }
    if s.starts_with("https://") {
        return Ok(s.to_owned());
    }
    Ok(format!("https://{s}"))
}

/// Refuses what a broker kubeconfig from a Secret may not do inside this controller: run a
/// program (`exec`, `auth-provider`), read this pod's files (`tokenFile`, certificate and key
/// paths), go through a proxy, or skip TLS verification (unless `allow_insecure`). Whoever can
/// write that Secret must not get code execution or file reads in exip-syncer's pod.
pub fn check_secret_kubeconfig(kc: &Kubeconfig, allow_insecure: bool) -> anyhow::Result<()> {
    for named in &kc.auth_infos {
        let Some(user) = &named.auth_info else {
            continue;
        };
        let user_name = &named.name;
        if user.exec.is_some() {
            bail!("user {user_name:?} runs a program (exec): refused");
        }
        if user.auth_provider.is_some() {
            bail!("user {user_name:?} uses an auth-provider plugin: refused");
        }
        for (field, value) in [
            ("tokenFile", &user.token_file),
            ("client-certificate", &user.client_certificate),
            ("client-key", &user.client_key),
        ] {
            if value.is_some() {
                bail!("user {user_name:?} reads a file ({field}): use the *-data fields");
            }
        }
    }
    for named in &kc.clusters {
        let Some(cluster) = &named.cluster else {
            continue;
        };
        let cluster_name = &named.name;
        if cluster.certificate_authority.is_some() {
            bail!(
                "cluster {cluster_name:?} reads a file (certificate-authority): use certificate-authority-data"
            );
        }
        if cluster.proxy_url.is_some() {
            bail!("cluster {cluster_name:?} sets proxy-url: refused");
        }
        if let Some(server) = &cluster.server {
            broker_url(server, allow_insecure)?;
        }
        if cluster.insecure_skip_tls_verify == Some(true) {
            if !allow_insecure {
                bail!(
                    "cluster {cluster_name:?} skips TLS verification; refused without --allow-insecure-broker"
                );
            }
            tracing::warn!(
                cluster = cluster_name,
                "--allow-insecure-broker: broker TLS not verified"
            );
        }
    }
    Ok(())
}

/// The token and CA to reach the broker with, as read from ServiceDiscovery.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerCredentials {
    pub token: String,
    /// Base64 of the broker's CA certificate (PEM); empty when none is given.
    pub ca_b64: String,
}

impl std::fmt::Debug for BrokerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerCredentials")
            .field("token", &"<redacted>")
            .field("ca_b64", &self.ca_b64)
            .finish()
    }
}

/// The kubeconfigs to try for the broker, in order, from a ServiceDiscovery spec and the
/// credentials read for it: token auth, TLS verified unless `brokerK8sInsecure` is set. The two
/// trust sources of Submariner's admiral (`GetAuthorizedRestConfigFromData`): the given CA,
/// then the system roots, so that a broker certificate from a public CA works whatever CA
/// ServiceDiscovery carries (stale or none). Admiral tries the roots first; the CA first
/// trusts less when it suffices, and spares the usual private-CA broker a failed handshake on
/// every connect (which the TLS verifier logs at ERROR).
pub fn service_discovery_kubeconfigs(
    sd: &ServiceDiscoverySpec,
    credentials: &BrokerCredentials,
    namespace: &str,
    allow_insecure: bool,
) -> anyhow::Result<Vec<Kubeconfig>> {
    let server = broker_url(&sd.broker_k8s_api_server, allow_insecure)?;
    if credentials.token.is_empty() {
        bail!("the broker token is empty");
    }
    let kubeconfig = |cluster: serde_json::Value| {
        let value = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{ "name": "broker", "cluster": cluster }],
            "users": [{ "name": "broker", "user": { "token": credentials.token } }],
            "contexts": [{ "name": "broker", "context": { "cluster": "broker", "user": "broker", "namespace": namespace } }],
            "current-context": "broker",
        });
        serde_json::from_value::<Kubeconfig>(value).context("build broker kubeconfig")
    };
    if sd.broker_k8s_insecure {
        if !allow_insecure {
            bail!(
                "ServiceDiscovery sets brokerK8sInsecure (broker TLS unverified); refused without --allow-insecure-broker"
            );
        }
        tracing::warn!("--allow-insecure-broker: brokerK8sInsecure, broker TLS not verified");
        return Ok(vec![kubeconfig(
            json!({ "server": server, "insecure-skip-tls-verify": true }),
        )?]);
    }
    let mut candidates = Vec::new();
    let ca = credentials.ca_b64.trim();
    if !ca.is_empty() {
        candidates.push(kubeconfig(
            json!({ "server": server, "certificate-authority-data": ca }),
        )?);
    }
    candidates.push(kubeconfig(json!({ "server": server }))?);
    Ok(candidates)
}

/// The broker credentials ServiceDiscovery leads to: those of the Secret it names
/// (`brokerK8sSecret`, keys `token` and `ca.crt`, what Submariner's pods mount and what token
/// rotation updates) when this controller may read it, else its inline token and CA. The
/// second value says why the Secret was not used, when it was named.
async fn service_discovery_credentials(
    local: &Client,
    sd: &ServiceDiscoverySpec,
) -> (BrokerCredentials, Option<String>) {
    let inline = BrokerCredentials {
        token: sd.broker_k8s_api_server_token.clone(),
        ca_b64: sd.broker_k8s_ca.trim().to_owned(),
    };
    let name = sd.broker_k8s_secret.trim();
    if name.is_empty() {
        return (inline, None);
    }
    if !multivpc_api::net::is_object_name(name) {
        return (
            inline,
            Some(format!("brokerK8sSecret {name:?} is not an object name")),
        );
    }
    let api: Api<Secret> = Api::namespaced(local.clone(), SUBMARINER_NAMESPACE);
    let secret = match api.get(name).await {
        Ok(s) => s,
        Err(e) => {
            return (
                inline,
                Some(format!(
                    "cannot read Secret {SUBMARINER_NAMESPACE}/{name} named by brokerK8sSecret: {e}"
                )),
            );
        }
    };
    let data = secret.data.unwrap_or_default();
    let token = data
        .get("token")
        .and_then(|t| std::str::from_utf8(&t.0).ok())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return (
            inline,
            Some(format!(
                "Secret {SUBMARINER_NAMESPACE}/{name} named by brokerK8sSecret has no token"
            )),
        );
    };
    use base64::Engine as _;
    let ca_b64 = data
        .get("ca.crt")
        .filter(|c| !c.0.is_empty())
        .map(|c| base64::engine::general_purpose::STANDARD.encode(&c.0))
        .unwrap_or(inline.ca_b64);
    (BrokerCredentials { token, ca_b64 }, None)
}

/// Builds a client for the broker and names its namespace. Never logs the token. With several
/// kubeconfigs to try (a CA, then the system roots), each but the last must list the broker's
/// GatewayExIps before it is taken. `secret_note` keeps the last reason the brokerK8sSecret
/// was not used, so that it is logged once, not on every reconnect.
pub async fn connect(
    local: &Client,
    access: &Access,
    secret_note: &mut Option<String>,
) -> anyhow::Result<(Client, String)> {
    let (candidates, namespace) = match &access.source {
        Source::Disabled => bail!("broker sync is disabled"),
        Source::ServiceDiscovery => {
            let api: Api<ServiceDiscovery> = Api::namespaced(local.clone(), SUBMARINER_NAMESPACE);
            let sd = api
                .get_opt(SERVICE_DISCOVERY_NAME)
                .await
                .with_context(|| format!("read {SUBMARINER_NAMESPACE}/{SERVICE_DISCOVERY_NAME}"))?
                .with_context(|| {
                    format!("no ServiceDiscovery {SUBMARINER_NAMESPACE}/{SERVICE_DISCOVERY_NAME}")
                })?;
            let ns = access
                .namespace
                .clone()
                .or_else(|| {
                    Some(sd.spec.broker_k8s_remote_namespace.clone()).filter(|n| !n.is_empty())
                })
                .unwrap_or_else(|| DEFAULT_BROKER_NAMESPACE.into());
            let (credentials, note) = service_discovery_credentials(local, &sd.spec).await;
            if note != *secret_note {
                if let Some(why) = &note {
                    tracing::warn!(
                        reason = why.as_str(),
                        "using ServiceDiscovery's inline broker token, which does not follow token rotation (docs/broker.md: credentials)"
                    );
                } else if secret_note.is_some() {
                    tracing::info!("using the broker Secret named by ServiceDiscovery");
                }
                *secret_note = note;
            }
            (
                service_discovery_kubeconfigs(&sd.spec, &credentials, &ns, access.allow_insecure)?,
                ns,
            )
        }
        Source::Secret { namespace, name } => {
            let api: Api<Secret> = Api::namespaced(local.clone(), namespace);
            let secret = api
                .get(name)
                .await
                .with_context(|| format!("read Secret {namespace}/{name}"))?;
            let data = secret
                .data
                .as_ref()
                .and_then(|d| d.get("kubeconfig"))
                .with_context(|| format!("Secret {namespace}/{name} has no key kubeconfig"))?;
            let text = std::str::from_utf8(&data.0).context("kubeconfig is not UTF-8")?;
            let kc = Kubeconfig::from_yaml(text).context("parse the broker kubeconfig")?;
            check_secret_kubeconfig(&kc, access.allow_insecure)
                .with_context(|| format!("the broker kubeconfig in Secret {namespace}/{name}"))?;
            let context_ns = kc
                .contexts
                .iter()
                .find(|c| Some(&c.name) == kc.current_context.as_ref())
                .and_then(|c| c.context.as_ref()?.namespace.clone());
            let ns = access
                .namespace
                .clone()
                .or(context_ns)
                .unwrap_or_else(|| DEFAULT_BROKER_NAMESPACE.into());
            (vec![kc], ns)
        }
    };
    let last = candidates.len().saturating_sub(1);
    for (i, kubeconfig) in candidates.into_iter().enumerate() {
        if i == last {
            return Ok((broker_client(kubeconfig).await?, namespace));
        }
        let probed = async {
            let client = broker_client(kubeconfig).await?;
            let probe: Api<GatewayExIp> = Api::namespaced(client.clone(), &namespace);
            // Metadata only: a broker object that does not decode must not fail the probe
            // (nor make kube log the whole list).
            probe.list_metadata(&ListParams::default().limit(1)).await?;
            anyhow::Ok(client)
        };
        match probed.await {
            Ok(client) => return Ok((client, namespace)),
            Err(e) => tracing::info!(
                err = format!("{e:#}"),
                "broker not reached with the given CA; trying the system roots"
            ),
        }
    }
    bail!("no broker kubeconfig to try")
}

async fn broker_client(kubeconfig: Kubeconfig) -> anyhow::Result<Client> {
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .context("broker client configuration")?;
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(300));
    config.write_timeout = Some(Duration::from_secs(10));
    Client::try_from(config).context("broker client")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd(server: &str, insecure: bool) -> ServiceDiscoverySpec {
        ServiceDiscoverySpec {
            broker_k8s_api_server: server.into(),
            broker_k8s_api_server_token: "s3cr3t".into(),
            broker_k8s_ca: "Q0E=".into(),
            broker_k8s_remote_namespace: "brk".into(),
            broker_k8s_insecure: insecure,
            broker_k8s_secret: String::new(),
            cluster_id: "c1".into(),
            globalnet_enabled: true,
        }
    }

    #[test]
    fn broker_url_adds_https_to_host_port() {
        assert_eq!(
            broker_url("10.0.0.1:6443", false).unwrap(),
            "https://10.0.0.1:6443"
        );
        assert_eq!(
            broker_url("https://b:443/", false).unwrap(),
            "https://b:443"
        );
        assert!(broker_url(" ", false).is_err());
        // Plain http only when explicitly allowed.
        assert!(broker_url("http://b:80", false).is_err());
        assert_eq!(broker_url("http://b:80", true).unwrap(), "http://b:80");
    }

    fn inline(sd: &ServiceDiscoverySpec) -> BrokerCredentials {
        BrokerCredentials {
            token: sd.broker_k8s_api_server_token.clone(),
            ca_b64: sd.broker_k8s_ca.clone(),
        }
    }

    #[test]
    fn service_discovery_becomes_verified_token_kubeconfigs_ca_then_system_roots() {
        let spec = sd("127.0.0.1:6443", false);
        let kcs = service_discovery_kubeconfigs(&spec, &inline(&spec), "brk", false).unwrap();
        let clusters: Vec<_> = kcs
            .iter()
            .map(|kc| kc.clusters[0].cluster.clone().unwrap())
            .collect();
        // Admiral's two trust sources: ServiceDiscovery's CA, then the system roots (no CA data).
        assert_eq!(clusters.len(), 2);
        assert_eq!(
            clusters[0].certificate_authority_data.as_deref(),
            Some("Q0E=")
        );
        assert_eq!(clusters[1].certificate_authority_data, None);
        for (kc, cluster) in kcs.iter().zip(&clusters) {
            assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
            assert_ne!(cluster.insecure_skip_tls_verify, Some(true));
            assert_eq!(
                kc.contexts[0]
                    .context
                    .as_ref()
                    .unwrap()
                    .namespace
                    .as_deref(),
                Some("brk")
            );
            // The token is kept out of Debug output.
            assert!(!format!("{kc:?}").contains("s3cr3t"));
        }
        assert!(!format!("{:?}", inline(&spec)).contains("s3cr3t"));
        // Without a CA, the system roots only.
        let no_ca = BrokerCredentials {
            ca_b64: " ".into(),
            ..inline(&spec)
        };
        let kcs = service_discovery_kubeconfigs(&spec, &no_ca, "brk", false).unwrap();
        assert_eq!(kcs.len(), 1);
    }

    #[test]
    fn insecure_only_when_asked() {
        let spec = sd("b:6443", true);
        let refused = service_discovery_kubeconfigs(&spec, &inline(&spec), "brk", false)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("--allow-insecure-broker"), "{refused}");
        let kcs = service_discovery_kubeconfigs(&spec, &inline(&spec), "brk", true).unwrap();
        assert_eq!(kcs.len(), 1);
        let cluster = kcs[0].clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.insecure_skip_tls_verify, Some(true));
        assert_eq!(cluster.certificate_authority_data, None);
        let spec = sd("b:6443", false);
        let no_token = BrokerCredentials {
            token: String::new(),
            ..inline(&spec)
        };
        assert!(service_discovery_kubeconfigs(&spec, &no_token, "brk", false).is_err());
    }

    #[test]
    fn secret_kubeconfigs_may_not_run_programs_or_read_files() {
        let base = |user: &str, cluster: &str| {
            Kubeconfig::from_yaml(&format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: b, cluster: {{server: 'https://b:6443'{cluster}}}}}]\nusers: [{{name: u, user: {{{user}}}}}]\ncontexts: [{{name: b, context: {{cluster: b, user: u}}}}]\ncurrent-context: b\n"
            ))
            .unwrap()
        };
        assert!(check_secret_kubeconfig(&base("token: t", ""), false).is_ok());
        for (user, cluster, why) in [
            (
                "exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh}",
                "",
                "exec",
            ),
            ("auth-provider: {name: gcp}", "", "auth-provider"),
            (
                "tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token",
                "",
                "tokenFile",
            ),
            ("client-certificate: /etc/x.crt", "", "client-certificate"),
            ("client-key: /etc/x.key", "", "client-key"),
            (
                "token: t",
                ", certificate-authority: /etc/ca.crt",
                "certificate-authority",
            ),
            ("token: t", ", proxy-url: 'http://p:3128'", "proxy-url"),
            (
                "token: t",
                ", insecure-skip-tls-verify: true",
                "TLS verification",
            ),
        ] {
            let err = check_secret_kubeconfig(&base(user, cluster), false)
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
        let plain = Kubeconfig::from_yaml(
            "apiVersion: v1\nkind: Config\nclusters: [{name: b, cluster: {server: 'http://b:80'}}]\nusers: []\ncontexts: []\n",
        )
        .unwrap();
        assert!(check_secret_kubeconfig(&plain, false).is_err());
        assert!(check_secret_kubeconfig(&plain, true).is_ok());
    }
}
