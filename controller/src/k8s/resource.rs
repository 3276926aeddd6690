//! The `Topology` custom resource as a kube `Resource`: the same spec type as `topology.yaml`,
//! the typed status of `topology::status`. Written by hand (no kube derive) so the CRD stays the one
//! `crd.rs` generates from schemars 0.8.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::NamespaceResourceScope;
use serde::{Deserialize, Serialize};

use crate::topology::status::TopologyStatus;
use crate::topology::types::{Metadata, Topology, TopologySpec, API_VERSION, KIND};

pub const GROUP: &str = "bssctl.io";
pub const VERSION: &str = "v1alpha1";
pub const PLURAL: &str = "topologies";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopologyResource {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "kind")]
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: TopologySpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TopologyStatus>,
}

fn api_version() -> String {
    API_VERSION.into()
}
fn kind() -> String {
    KIND.into()
}

impl kube::Resource for TopologyResource {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl TopologyResource {
    /// The resource from a topology document (what `bssctl apply --runtime kubernetes` submits).
    pub fn from_topology(t: &Topology, namespace: &str) -> TopologyResource {
        TopologyResource {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            metadata: ObjectMeta {
                name: Some(t.metadata.name.clone()),
                namespace: Some(namespace.into()),
                labels: (!t.metadata.labels.is_empty()).then(|| t.metadata.labels.clone()),
                ..ObjectMeta::default()
            },
            spec: t.spec.clone(),
            status: None,
        }
    }

    /// The topology document of this resource, as `validate` wants it (the namespace is the
    /// resource's).
    pub fn to_topology(&self) -> Topology {
        Topology {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            metadata: Metadata {
                name: self.metadata.name.clone().unwrap_or_default(),
                namespace: self.metadata.namespace.clone(),
                labels: self.metadata.labels.clone().unwrap_or_default(),
            },
            spec: self.spec.clone(),
        }
    }
}
