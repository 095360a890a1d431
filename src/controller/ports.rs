//! The two sides a pass talks to, as the executor ([`super::execute`]) sees them: the platform
//! ([`Platform`]: the calls of the steps, behind the platform's shared health) and the cluster
//! ([`Cluster`]: the writes to the resource's own objects). The live sides wrap the platform
//! client and the Kubernetes client with this process's caches and memory; the executor's unit
//! tests drive it with scripted fakes instead.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Secret;
use secrecy::{ExposeSecret, SecretString};

use super::context::Context;
use super::error::Error;
use super::inputs::ResolvedPlatform;
use super::unclaimed::{Lookup, MAX_KEYS, Unclaimed};
use super::{rollout, writes};
use crate::api::{
    ConnectorInstance, ConnectorInstanceStatus, REFERENCE_TAG_PREFIX, RolloutTarget, cluster_tag,
};
use crate::platform::{
    ElementConfig, ElementInstance, InstanceRequest, OAuthUrlRequest, PlatformClient, PlatformError,
};

/// The platform calls a pass makes (only those; deletion has its own path).
#[allow(async_fn_in_trait)]
pub trait Platform {
    /// Fails without calling while the platform is known to fail for every instance (see
    /// [`super::core::health`]). `admitted`: this pass made a call already.
    fn gate(&self, admitted: bool) -> Result<(), Error>;
    /// Whether an instance with the reference tag `reference` may exist on the platform without
    /// a resource that records it (see [`super::unclaimed`]); no call (a scan of the platform may
    /// start in the background).
    fn may_hold(&self, reference: &str) -> bool;
    /// `GET /instances?tags[]=`: the ids of the instances that carry `tag`.
    async fn find_by_tag(&self, tag: &str) -> Result<Vec<i64>, PlatformError>;
    /// `POST /instances`, sent only while `wanted()` holds (asked right before each attempt goes
    /// out; [`PlatformError::Withdrawn`] otherwise).
    async fn create(
        &self,
        body: &InstanceRequest,
        wanted: &(dyn Fn() -> bool + Sync),
    ) -> Result<ElementInstance, PlatformError>;
    /// `GET /instances/{id}`.
    async fn get(&self, id: i64) -> Result<ElementInstance, PlatformError>;
    /// `PATCH /instances/{id}` with name and tags.
    async fn patch(&self, id: i64, name: &str, tags: &[String]) -> Result<ElementInstance, PlatformError>;
    /// `PUT` / `DELETE /instances/{id}/enabled`.
    async fn set_enabled(&self, id: i64, enabled: bool) -> Result<(), PlatformError>;
    /// `PUT /instances/{id}` (re-authentication).
    async fn reauthenticate(&self, id: i64, body: &InstanceRequest)
    -> Result<ElementInstance, PlatformError>;
    /// `POST /elements/{key}/oauth/url`.
    async fn oauth_url(&self, connector: &str, request: &OAuthUrlRequest) -> Result<String, PlatformError>;
    /// `GET /instances` with the instance token, as a workload calls: the id of the instance the
    /// token belongs to.
    async fn verify_token(&self, token: &SecretString) -> Result<i64, PlatformError>;
    /// The configuration catalog of `connector` (cached).
    async fn catalog(&self, connector: &str) -> Result<Arc<Vec<ElementConfig>>, Error>;
}

/// The Kubernetes side of a pass: its writes, each to the resource's own objects, and whether
/// this process still holds the resource.
#[allow(async_fn_in_trait)]
pub trait Cluster {
    /// A check, made when called, of whether the resource is still in this process's watch (the
    /// same object, by UID): not once it was relabeled out of this shard's selector, or is gone.
    /// No call: the watch cache.
    fn holder(&self) -> Box<dyn Fn() -> bool + Send + Sync + '_>;
    /// Adds the operator's finalizer unless it is there.
    async fn ensure_finalizer(&self) -> Result<(), Error>;
    /// Writes the token Secret `desired` unless `existing` holds it already; whether it wrote.
    async fn write_token_secret(&self, desired: &Secret, existing: Option<&Secret>) -> Result<bool, Error>;
    /// Removes the keys rendered from the `authorization` value from the token Secret.
    async fn withhold_authorization(&self, existing: Option<&Secret>) -> Result<bool, Error>;
    /// Deletes the OAuth callback's grant Secret `name`.
    async fn delete_grant_secret(&self, name: &str) -> Result<(), Error>;
    /// Restarts the `targets` for the token Secret content `digest`; the workloads restarted.
    async fn restart(&self, targets: &[RolloutTarget], digest: &str) -> Result<Vec<String>, Error>;
    /// Writes `new` as the status if it differs from `old`; whether it wrote.
    async fn write_status(
        &self,
        old: &ConnectorInstanceStatus,
        new: &ConnectorInstanceStatus,
    ) -> Result<bool, Error>;
}

/// The platform of a pass: its shared client, behind its shared health.
pub struct LivePlatform<'a> {
    ctx: &'a Context,
    platform: &'a ResolvedPlatform,
    client: PlatformClient,
    now: Instant,
}

impl<'a> LivePlatform<'a> {
    /// The platform `platform` as this process calls it (its client is made on first use).
    pub fn new(ctx: &'a Context, platform: &'a ResolvedPlatform, now: Instant) -> Result<Self, Error> {
        Ok(LivePlatform { ctx, platform, client: ctx.platform_client(platform)?, now })
    }
}

impl Platform for LivePlatform<'_> {
    fn gate(&self, admitted: bool) -> Result<(), Error> {
        self.ctx.platform_gate(self.platform, admitted)
    }

    fn may_hold(&self, reference: &str) -> bool {
        let identity = self.platform.identity();
        match self.ctx.unclaimed.lookup(&identity, reference, Instant::now()) {
            Lookup::Absent => false,
            Lookup::Maybe => true,
            Lookup::MaybeScan => {
                if let Some(cluster_id) = &self.ctx.settings.cluster_id {
                    let credentials = self.platform.credentials().map(SecretString::clone);
                    tokio::spawn(scan(
                        self.client.clone(),
                        self.ctx.unclaimed.clone(),
                        identity,
                        cluster_tag(cluster_id),
                        credentials,
                    ));
                }
                true
            }
        }
    }

    async fn find_by_tag(&self, tag: &str) -> Result<Vec<i64>, PlatformError> {
        Ok(self.client.find_instances_by_tag(tag).await?.iter().map(|i| i.id).collect())
    }

    async fn create(
        &self,
        body: &InstanceRequest,
        wanted: &(dyn Fn() -> bool + Sync),
    ) -> Result<ElementInstance, PlatformError> {
        self.client.create_instance_while(body, wanted).await
    }

    async fn get(&self, id: i64) -> Result<ElementInstance, PlatformError> {
        self.client.get_instance(id).await
    }

    async fn patch(&self, id: i64, name: &str, tags: &[String]) -> Result<ElementInstance, PlatformError> {
        self.client.patch_instance(id, name, tags).await
    }

    async fn set_enabled(&self, id: i64, enabled: bool) -> Result<(), PlatformError> {
        self.client.set_enabled(id, enabled).await
    }

    async fn reauthenticate(
        &self,
        id: i64,
        body: &InstanceRequest,
    ) -> Result<ElementInstance, PlatformError> {
        self.client.reauthenticate_instance(id, body).await
    }

    async fn oauth_url(&self, connector: &str, request: &OAuthUrlRequest) -> Result<String, PlatformError> {
        self.client.oauth_url(connector, request).await
    }

    async fn verify_token(&self, token: &SecretString) -> Result<i64, PlatformError> {
        self.client.verify_token(token).await.map(|instance| instance.id)
    }

    async fn catalog(&self, connector: &str) -> Result<Arc<Vec<ElementConfig>>, Error> {
        self.ctx.catalog(&self.client, connector, self.now).await
    }
}

/// Scans the platform `identity` (one paged search by this cluster's tag) for the index of
/// instances that may have no resource: the key of each one's reference tag.
/// Its failure is logged without the platform's credentials (`hidden`).
async fn scan(
    client: PlatformClient,
    unclaimed: Arc<Unclaimed>,
    identity: String,
    cluster_tag: String,
    hidden: [SecretString; 2],
) {
    // Never more keys than the index may hold: a platform that answers more leaves itself
    // unscanned.
    let mut kept = 0usize;
    let found = client
        .scan_instances_by_tag(&cluster_tag, |instance| {
            let reference = instance.tags.iter().find(|t| t.starts_with(REFERENCE_TAG_PREFIX))?;
            kept += 1;
            (kept <= MAX_KEYS).then(|| unclaimed.key(&identity, reference))
        })
        .await
        .and_then(|keys| {
            if kept > MAX_KEYS {
                let message =
                    format!("GET /instances: the scan by cluster tag found more than {MAX_KEYS} instances");
                return Err(PlatformError::Protocol { message });
            }
            Ok(keys)
        });
    match &found {
        Ok(keys) => {
            tracing::info!(platform = %identity, instances = keys.len(), "scanned the platform for this cluster's instances")
        }
        Err(err) => {
            let error = err.clone().redact(&hidden.each_ref().map(ExposeSecret::expose_secret));
            tracing::warn!(
                platform = %identity,
                error = %error,
                "could not scan the platform for this cluster's instances; resources without the finalizer search by tag until a later scan"
            );
        }
    }
    unclaimed.scanned(&identity, found.map_err(|_| ()), Instant::now());
}

/// The cluster as a pass of `ci` writes to it.
pub struct LiveCluster<'a> {
    ctx: &'a Context,
    ci: &'a ConnectorInstance,
}

impl<'a> LiveCluster<'a> {
    /// Writes on behalf of `ci`.
    pub fn new(ctx: &'a Context, ci: &'a ConnectorInstance) -> Self {
        LiveCluster { ctx, ci }
    }
}

impl Cluster for LiveCluster<'_> {
    fn holder(&self) -> Box<dyn Fn() -> bool + Send + Sync + '_> {
        let uid = kube::ResourceExt::uid(self.ci);
        Box::new(move || {
            self.ctx
                .cached_instance(self.ci)
                .is_some_and(|cached| kube::ResourceExt::uid(cached.as_ref()) == uid)
        })
    }

    async fn ensure_finalizer(&self) -> Result<(), Error> {
        writes::ensure_finalizer(self.ci, self.ctx).await
    }

    async fn write_token_secret(&self, desired: &Secret, existing: Option<&Secret>) -> Result<bool, Error> {
        writes::write_token_secret(self.ci, self.ctx, desired, existing).await
    }

    async fn withhold_authorization(&self, existing: Option<&Secret>) -> Result<bool, Error> {
        writes::withhold_authorization(self.ci, self.ctx, existing).await
    }

    async fn delete_grant_secret(&self, name: &str) -> Result<(), Error> {
        let namespace = kube::ResourceExt::namespace(self.ci).unwrap_or_default();
        writes::delete_grant_secret(self.ctx, &namespace, name).await
    }

    async fn restart(&self, targets: &[RolloutTarget], digest: &str) -> Result<Vec<String>, Error> {
        let namespace = kube::ResourceExt::namespace(self.ci).unwrap_or_default();
        rollout::restart(self.ctx, &namespace, targets, digest).await
    }

    async fn write_status(
        &self,
        old: &ConnectorInstanceStatus,
        new: &ConnectorInstanceStatus,
    ) -> Result<bool, Error> {
        Ok(writes::write_status(self.ci, self.ctx, old, new).await?.is_some())
    }
}
