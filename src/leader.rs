//! Leader election for more than one replica, on a `coordination.k8s.io` Lease (through the
//! `kube-lease-manager` crate). Only the leader runs the controllers; a replica that loses the
//! lease exits at once so that two replicas never reconcile the same object.

use std::time::Duration;

use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where and as whom to hold the lease.
#[derive(Debug, Clone)]
pub struct LeaderOptions {
    /// Name of the Lease object.
    pub lease_name: String,
    /// Namespace of the Lease object.
    pub namespace: String,
    /// This replica's identity (the pod name in a cluster).
    pub identity: String,
    /// How long a lease stays valid without renewal; a standby takes over at most this long after
    /// the leader died.
    pub duration: Duration,
}

/// A held lease.
#[derive(Debug)]
pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

/// Waits until this replica holds the lease, or until `stop` resolves (then `None`).
pub async fn acquire(
    client: kube::Client,
    options: &LeaderOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Option<Leadership>, LeaseManagerError> {
    let seconds = options.duration.as_secs().max(3);
    let manager = LeaseManagerBuilder::new(client, &options.lease_name)
        .with_namespace(&options.namespace)
        .with_identity(&options.identity)
        .with_duration(seconds)
        .with_grace((seconds / 3).max(1))
        .with_field_manager(lease_field_manager(&options.identity))
        .build()
        .await?;
    let (mut state, task) = manager.watch().await;
    tracing::info!(lease = %options.lease_name, namespace = %options.namespace, identity = %options.identity, "waiting for leadership");
    let became_leader = tokio::select! {
        result = state.wait_for(|leader| *leader) => result.is_ok(),
        _ = stop => false,
    };
    if !became_leader {
        drop(state);
        let _ = task.await;
        return Ok(None);
    }
    tracing::info!(identity = %options.identity, "became the leader");
    Ok(Some(Leadership { state, task }))
}

/// The field manager of this replica's Lease writes. It must differ between replicas: taking an
/// orphaned lease is a server-side apply without force, which only conflicts (and so only lets
/// one replica win) when the two writers are different managers. One shared name let two
/// replicas starting together both take the lease.
fn lease_field_manager(identity: &str) -> String {
    let mut manager = format!("{}-lease-{identity}", crate::api::FIELD_MANAGER);
    // The API server takes field managers of at most 128 characters.
    while manager.len() > 128 {
        manager.pop();
    }
    manager
}

impl Leadership {
    /// Resolves when the lease is lost.
    pub async fn lost(&mut self) {
        let _ = self.state.wait_for(|leader| !*leader).await;
    }

    /// Gives the lease up so that a standby takes over at once.
    pub async fn release(self) {
        drop(self.state);
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(_))) => tracing::info!("released the lease"),
            Ok(Ok(Err(err))) => tracing::warn!(%err, "could not release the lease"),
            Ok(Err(err)) => tracing::warn!(%err, "lease task failed"),
            Err(_) => tracing::warn!("timed out releasing the lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_replica_writes_the_lease_as_a_manager_of_its_own() {
        let a = lease_field_manager("connector-operator-7d9f-abcde");
        let b = lease_field_manager("connector-operator-7d9f-fghij");
        assert_ne!(a, b);
        assert!(a.ends_with("-lease-connector-operator-7d9f-abcde"), "{a}");
        assert_eq!(lease_field_manager(&"x".repeat(300)).len(), 128);
    }
}
