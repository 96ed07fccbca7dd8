//! Server-side apply of YAML documents, JSON values and typed objects.
use std::fmt::Debug;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::{self, ApiResource, Scope};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Field manager used by every harness apply.
pub const FIELD_MANAGER: &str = "multivpc-e2e";

/// A dynamic API handle for `obj`'s kind, namespaced by the object (or
/// `default_ns`) when the kind is namespaced. Resolved through discovery.
pub async fn dynamic_api(
    client: &Client,
    obj: &DynamicObject,
    default_ns: &str,
) -> Result<(Api<DynamicObject>, ApiResource)> {
    let types = obj
        .types
        .as_ref()
        .ok_or_else(|| anyhow!("object {} has no apiVersion/kind", obj.name_any()))?;
    let gvk = kube::api::GroupVersionKind::try_from(types)?;
    let (ar, caps) = discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("discover {}/{}", types.api_version, types.kind))?;
    let api = match caps.scope {
        Scope::Namespaced => {
            let ns = obj.metadata.namespace.as_deref().unwrap_or(default_ns);
            Api::namespaced_with(client.clone(), ns, &ar)
        }
        Scope::Cluster => Api::all_with(client.clone(), &ar),
    };
    Ok((api, ar))
}

/// Server-side apply one dynamic object (force, field manager [`FIELD_MANAGER`]).
pub async fn apply_dynamic(client: &Client, obj: &DynamicObject) -> Result<DynamicObject> {
    apply_dynamic_as(client, obj, FIELD_MANAGER).await
}

/// Server-side apply a JSON object as field manager `manager`: a test standing in for a
/// controller (tunnel-manager uses only GatewayExIps that exip-syncer wrote).
pub async fn apply_json_as(
    client: &Client,
    value: serde_json::Value,
    manager: &str,
) -> Result<DynamicObject> {
    let obj: DynamicObject = serde_json::from_value(value).context("not a Kubernetes object")?;
    apply_dynamic_as(client, &obj, manager).await
}

async fn apply_dynamic_as(
    client: &Client,
    obj: &DynamicObject,
    manager: &str,
) -> Result<DynamicObject> {
    let (api, ar) = dynamic_api(client, obj, "default").await?;
    let name = obj.name_any();
    let mut obj = obj.clone();
    obj.metadata.managed_fields = None;
    obj.metadata.resource_version = None;
    api.patch(
        &name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&obj),
    )
    .await
    .with_context(|| format!("apply {} {name}", ar.kind))
}

/// Server-side apply a JSON value holding any object with apiVersion and kind.
pub async fn apply_json(client: &Client, value: serde_json::Value) -> Result<DynamicObject> {
    let obj: DynamicObject = serde_json::from_value(value).context("not a Kubernetes object")?;
    apply_dynamic(client, &obj).await
}

/// Parse a (multi-document) YAML string into objects; empty documents are skipped.
pub fn parse_yaml(yaml: &str) -> Result<Vec<DynamicObject>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        out.push(
            serde_yaml::from_value(value).context("YAML document is not a Kubernetes object")?,
        );
    }
    Ok(out)
}

/// Server-side apply every document of a (multi-document) YAML string, in order.
/// The first refusal stops and is returned (its message is the API server's).
pub async fn apply_yaml(client: &Client, yaml: &str) -> Result<Vec<DynamicObject>> {
    let mut applied = Vec::new();
    for obj in parse_yaml(yaml)? {
        applied.push(apply_dynamic(client, &obj).await?);
    }
    Ok(applied)
}

/// Like [`apply_yaml`] for a file.
pub async fn apply_file(client: &Client, path: impl AsRef<Path>) -> Result<Vec<DynamicObject>> {
    let path = path.as_ref();
    let yaml = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    apply_yaml(client, &yaml)
        .await
        .with_context(|| format!("apply {}", path.display()))
}

/// Server-side apply a typed object (k8s-openapi type or kube CustomResource);
/// namespaced kinds use the object's namespace (or `default`).
pub async fn apply<K>(client: &Client, obj: &K) -> Result<K>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    let mut value = serde_json::to_value(obj)?;
    // SSA needs apiVersion/kind in the body.
    if value.get("kind").is_none() {
        let dt = K::DynamicType::default();
        value["apiVersion"] = K::api_version(&dt).into();
        value["kind"] = K::kind(&dt).into();
    }
    let applied = apply_json(client, value).await?;
    Ok(serde_json::from_value(serde_json::to_value(applied)?)?)
}

/// Merge-patch the status subresource of a dynamic object (e.g. the
/// ClusterGlobalEgressIP's allocatedIPs, which Submariner would write).
pub async fn patch_status_dynamic(
    client: &Client,
    obj: &DynamicObject,
    status: serde_json::Value,
) -> Result<DynamicObject> {
    let (api, ar) = dynamic_api(client, obj, "default").await?;
    let name = obj.name_any();
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await
    .with_context(|| format!("patch status of {} {name}", ar.kind))
}
