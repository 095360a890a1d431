//! The Kubernetes side of a ConnectorInstance reconcile: reading its status and token Secret the
//! way the watch caches allow, and the writes to its own objects (finalizer, token Secret, status,
//! the used OAuth grant Secret), each skipped when it would change nothing. The restarts of
//! workloads are in [`super::rollout`].

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::context::{Context, resource_version};
use super::error::Error;
use super::inputs;
use super::token_secret;
use crate::api::{ConnectorInstance, ConnectorInstanceStatus, FIELD_MANAGER, FINALIZER};

/// The status of `ci`, or the one this operator wrote last if `ci` is older than that write: the
/// copy kept since the write, or, once the watch has shown the write (and the copy was dropped),
/// the cache's newer version.
pub(super) fn current_status(ci: &ConnectorInstance, ctx: &Context, uid: &str) -> ConnectorInstanceStatus {
    let seen = resource_version(ci);
    let (copy, written_rv) = ctx.recall(uid, |m| (m.written_status.clone(), m.written_status_rv));
    match copy {
        Some(written) if written.0 > seen => written.1,
        Some(_) => {
            // The cache has caught up: no need to keep a copy.
            ctx.remember(uid, |m| m.written_status = None);
            ci.status.clone().unwrap_or_default()
        }
        None if written_rv > seen => ctx
            .cached_instance(ci)
            .filter(|latest| resource_version(latest.as_ref()) >= written_rv)
            .and_then(|latest| latest.status())
            .unwrap_or_else(|| ci.status.clone().unwrap_or_default()),
        None => ci.status.clone().unwrap_or_default(),
    }
}

/// The token Secret: from the watch cache, or read when the cache does not have it or has not
/// caught up with this operator's last write.
pub(super) async fn token_secret(
    ctx: &Context,
    uid: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<Arc<Secret>>, Error> {
    let written = ctx.recall(uid, |m| m.written_secret);
    let cached = ctx.cached_token_secret(namespace, name);
    if let Some(Some(cached)) = &cached
        && resource_version(cached.as_ref()) >= written
    {
        return Ok(Some(cached.clone()));
    }
    // Never written by this process and no Secret of that name listed (token Secrets by the watch
    // of owned Secrets, any other by the metadata watch): nothing to read (the write then creates,
    // and fails rather than overwrite one that appeared meanwhile).
    let owned_listed = ctx.stores.token_secrets.is_listed();
    if written == 0 && cached.is_none() && owned_listed && !ctx.stores.secrets.may_exist(namespace, name) {
        return Ok(None);
    }
    inputs::get_secret(&ctx.client, namespace, name).await
}

/// Requests for objects of kind `K` in `ci`'s namespace.
fn requests<K: Resource<DynamicType = ()>>(ci: &ConnectorInstance) -> kube::core::Request {
    kube::core::Request::new(K::url_path(&(), ci.namespace().as_deref()))
}

/// Sends a write and reads of its answer only the resourceVersion it produced: the object the API
/// server sends back (with its managedFields, most of its bytes) is never built.
async fn written_version(
    client: &kube::Client,
    request: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
) -> Result<u64, kube::Error> {
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(default, rename = "resourceVersion")]
        resource_version: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Written {
        metadata: Meta,
    }
    let written: Written = client.request(request.map_err(kube::Error::BuildRequest)?).await?;
    Ok(written.metadata.resource_version.and_then(|rv| rv.parse().ok()).unwrap_or(0))
}

/// Adds the operator's finalizer unless it is there (or this process just added it).
pub(super) async fn ensure_finalizer(ci: &ConnectorInstance, ctx: &Context) -> Result<(), Error> {
    if ci.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let uid = ci.uid().unwrap_or_default();
    if ctx.recall(&uid, |m| m.finalizer_added) > resource_version(ci) {
        // This process added it; the cached copy predates that write.
        return Ok(());
    }
    let mut finalizers = ci.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    if let Some(rv) = patch_finalizers(ci, ctx, json!(finalizers)).await? {
        ctx.remember(&uid, |m| m.finalizer_added = rv);
    }
    Ok(())
}

/// Sets the finalizer list, guarded by the resourceVersion read (a conflict retries the pass).
/// Returns the resourceVersion written (none when the resource is gone).
async fn patch_finalizers(
    ci: &ConnectorInstance,
    ctx: &Context,
    finalizers: serde_json::Value,
) -> Result<Option<u64>, Error> {
    let patch = json!({ "metadata": { "finalizers": finalizers, "resourceVersion": ci.resource_version() } });
    let request = requests::<ConnectorInstance>(ci).patch(
        &ci.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    );
    match written_version(&ctx.client, request).await {
        Ok(rv) => Ok(Some(rv)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// Writes the status by server-side apply if it changed. Returns the resourceVersion written, or
/// `None` when nothing was written.
pub(super) async fn write_status(
    ci: &ConnectorInstance,
    ctx: &Context,
    old: &ConnectorInstanceStatus,
    new: &ConnectorInstanceStatus,
) -> Result<Option<u64>, Error> {
    if old == new {
        return Ok(None);
    }
    let uid = ci.uid().unwrap_or_default();
    let patch = json!({
        "apiVersion": ConnectorInstance::api_version(&()),
        "kind": ConnectorInstance::kind(&()),
        "status": new,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let request = requests::<ConnectorInstance>(ci).patch_subresource(
        "status",
        &ci.name_any(),
        &params,
        &Patch::Apply(&patch),
    );
    match written_version(&ctx.client, request).await {
        Ok(rv) => {
            ctx.remember(&uid, |m| {
                m.written_status = Some(Box::new((rv, new.clone())));
                m.written_status_rv = rv;
            });
            Ok(Some(rv))
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// Writes the token Secret `desired` (rendered by [`token_secret::render`]) if it is missing or differs
/// from what it should hold. A change of type replaces the Secret (a Secret's type cannot change
/// in place); a Secret the API server refuses (a type whose required keys the template lacks) is
/// a Stalled error with the API server's words. Returns whether anything was written.
pub(super) async fn write_token_secret(
    ci: &ConnectorInstance,
    ctx: &Context,
    desired: &Secret,
    existing: Option<&Secret>,
) -> Result<bool, Error> {
    if existing.is_some_and(|e| token_secret::is_up_to_date(e, desired)) {
        return Ok(false);
    }
    let name = token_secret::token_secret_name(ci);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ci.namespace().unwrap_or_default());
    let secrets = requests::<Secret>(ci);
    let retyped = existing
        .filter(|e| e.type_.as_deref().unwrap_or("Opaque") != desired.type_.as_deref().unwrap_or("Opaque"));
    if let Some(old) = retyped {
        // The new Secret is validated first (a dry run, which stops at "already exists" once
        // validation passed), so that a type the template cannot satisfy keeps the old Secret.
        let dry_run = PostParams { dry_run: true, field_manager: Some(FIELD_MANAGER.to_string()) };
        match api.create(&dry_run, desired).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(err) => return Err(rejected_or(err, &name)),
        }
        // Only the Secret that was checked to be ours goes (the UID precondition).
        let params = kube::api::DeleteParams {
            preconditions: Some(kube::api::Preconditions { uid: old.uid(), resource_version: None }),
            ..kube::api::DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => return Err(err.into()),
        }
    }
    let written = if existing.is_none() || retyped.is_some() {
        // Create, never overwrite: a Secret of this name that appeared since it was checked
        // makes this fail (409), and the next pass looks at whose it is.
        let params = PostParams { field_manager: Some(FIELD_MANAGER.to_string()), ..PostParams::default() };
        let body = serde_json::to_vec(desired)
            .map_err(|_| Error::Internal("the token Secret could not be serialized"))?;
        secrets.create(&params, body)
    } else if let Some(patch) = existing.and_then(|e| token_secret::removal_patch(e, desired)) {
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_string()), ..PatchParams::default() };
        secrets.patch(&name, &params, &Patch::Merge(&patch))
    } else {
        let mut body = serde_json::to_value(desired)
            .map_err(|_| Error::Internal("the token Secret could not be serialized"))?;
        body["apiVersion"] = json!("v1");
        body["kind"] = json!("Secret");
        secrets.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
    };
    let rv = written_version(&ctx.client, written).await.map_err(|err| rejected_or(err, &name))?;
    ctx.remember(&ci.uid().unwrap_or_default(), |m| m.written_secret = rv);
    Ok(true)
}

/// The API server's validation of the Secret itself (`Secret "x" is invalid: ...`) is the
/// template's to fix (Stalled); any other refusal (an admission policy, which may be lifted) is
/// retried.
fn rejected_or(err: kube::Error, name: &str) -> Error {
    match err {
        kube::Error::Api(status) if status.code == 422 && status.message.contains("is invalid") => {
            Error::invalid(
                "TokenSecretRejected",
                format!(
                    "the API server refused token Secret `{name}`: {}; fix spec.tokenSecret.template (a Secret type such as kubernetes.io/basic-auth needs its own keys)",
                    status.message.chars().take(400).collect::<String>()
                ),
            )
        }
        other => other.into(),
    }
}

/// Removes from the token Secret the keys rendered from the `authorization` value once the
/// platform no longer allows it (`consumerCredentials` withdrawn): the organisation's
/// credentials do not stay in a Secret the platform's owner took them back from. One merge patch,
/// only when such a key is there. Returns whether anything was written.
pub(super) async fn withhold_authorization(
    ci: &ConnectorInstance,
    ctx: &Context,
    existing: Option<&Secret>,
) -> Result<bool, Error> {
    let Some(template) = ci.spec.token_secret.as_ref().and_then(|t| t.template.as_ref()) else {
        return Ok(false);
    };
    let Some(data) = existing.and_then(|e| e.data.as_ref()) else {
        return Ok(false);
    };
    let present: serde_json::Map<String, serde_json::Value> =
        super::template::keys_using_authorization(template)
            .into_iter()
            .filter(|key| data.contains_key(key))
            .map(|key| (key, serde_json::Value::Null))
            .collect();
    if present.is_empty() {
        return Ok(false);
    }
    let secrets = requests::<Secret>(ci);
    let patch = json!({ "data": present });
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_string()), ..PatchParams::default() };
    let request = secrets.patch(&token_secret::token_secret_name(ci), &params, &Patch::Merge(&patch));
    let rv = written_version(&ctx.client, request).await?;
    ctx.remember(&ci.uid().unwrap_or_default(), |m| m.written_secret = rv);
    Ok(true)
}

/// Deletes the grant Secret the OAuth callback wrote (used, stale or denied); gone already is fine.
pub(super) async fn delete_grant_secret(ctx: &Context, namespace: &str, name: &str) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    match api.delete(name, &kube::api::DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Removes the operator's finalizer (the resource then goes) and forgets the resource.
pub(super) async fn release(ci: &ConnectorInstance, ctx: &Context, uid: &str) -> Result<(), Error> {
    let remaining: Vec<&String> = ci.finalizers().iter().filter(|f| *f != FINALIZER).collect();
    patch_finalizers(ci, ctx, json!(remaining)).await?;
    ctx.forget(uid);
    Ok(())
}
