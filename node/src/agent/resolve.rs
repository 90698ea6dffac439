//! The agent's [`Resolver`]: turns a pod's container into the runtime's
//! [`ContainerSpec`] with everything Kubernetes' rules decide worked out — the image from the
//! node's store, the environment (`valueFrom`, `$(VAR)`), the argv, volumes as bind mounts,
//! user, resources and capabilities.
//!
//! ConfigMaps and Secrets come from [`ObjectCache`], an in-memory copy the agent keeps
//! current from a store watch (the kubelet's watch-based manager does the same), so
//! resolving never waits on the network.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};

use coxswain_schema::kinds::core::{ConfigMap, Secret};
use coxswain_schema::kinds::pod::{Container, Pod};

use crate::cgroup::Resources;
use crate::env::{self, Lookup, PodFacts};
use crate::image::ImageStore;
use crate::pod::Resolver;
use crate::runtime::{BindMount, ContainerSpec, Rootfs, Sandbox};
use crate::volume::{self, HostPathPolicy, Prepared};

/// ConfigMaps and Secrets by `namespace/name`, as last seen in the store.
#[derive(Debug, Default)]
pub struct ObjectCache {
    config_maps: RwLock<HashMap<String, ConfigMap>>,
    secrets: RwLock<HashMap<String, Secret>>,
}

impl ObjectCache {
    /// Records a ConfigMap or Secret put in the store (other kinds are ignored).
    pub fn put(&self, value: &serde_json::Value) {
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        match kind {
            "ConfigMap" => {
                if let Ok(cm) = serde_json::from_value::<ConfigMap>(value.clone()) {
                    let key = cache_key(cm.metadata.namespace.as_deref(), &cm.metadata.name);
                    write(&self.config_maps).insert(key, cm);
                }
            }
            "Secret" => {
                if let Ok(s) = serde_json::from_value::<Secret>(value.clone()) {
                    let key = cache_key(s.metadata.namespace.as_deref(), &s.metadata.name);
                    write(&self.secrets).insert(key, s);
                }
            }
            _ => {}
        }
    }

    /// Forgets the object at a store key (`/core/ConfigMap/<ns>/<name>`).
    pub fn delete(&self, store_key: &str) {
        let mut parts = store_key.trim_start_matches('/').splitn(4, '/');
        let (_, kind, ns, name) = (parts.next(), parts.next(), parts.next(), parts.next());
        let (Some(kind), Some(ns), Some(name)) = (kind, ns, name) else {
            return;
        };
        let key = cache_key(Some(ns), name);
        match kind {
            "ConfigMap" => {
                write(&self.config_maps).remove(&key);
            }
            "Secret" => {
                write(&self.secrets).remove(&key);
            }
            _ => {}
        }
    }
}

fn cache_key(namespace: Option<&str>, name: &str) -> String {
    format!("{}/{name}", namespace.unwrap_or("default"))
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

impl Lookup for ObjectCache {
    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        read(&self.config_maps)
            .get(&cache_key(Some(namespace), name))
            .map(|cm| cm.data.clone().unwrap_or_default())
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let secrets = read(&self.secrets);
        let secret = secrets.get(&cache_key(Some(namespace), name))?;
        // A Secret whose data is not base64 was refused by validation; reading it as absent
        // makes the container fail with "not found" rather than panic.
        env::secret_data(secret).ok()
    }

    fn config_map_binary(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let maps = read(&self.config_maps);
        let cm = maps.get(&cache_key(Some(namespace), name))?;
        env::config_map_binary_data(cm).ok()
    }
}

/// The agent's resolver.
#[derive(Debug)]
pub struct NodeResolver {
    pub images: ImageStore,
    pub objects: std::sync::Arc<ObjectCache>,
    pub host_paths: HostPathPolicy,
    /// Where each pod's volumes live: `<volumes_dir>/<sandbox key>`.
    pub volumes_dir: PathBuf,
    pub node_name: String,
    pub host_ip: Option<String>,
    /// The node's allocatable resources: what `resourceFieldRef: limits.*` reports for a
    /// container without that limit, as the kubelet does.
    pub node_allocatable: BTreeMap<String, coxswain_schema::quantity::Quantity>,
    /// The volumes prepared per pod (by sandbox key), so a pod's volumes are set up once and
    /// shared by its containers.
    prepared: Mutex<HashMap<String, Vec<Prepared>>>,
}

impl NodeResolver {
    pub fn new(
        images: ImageStore,
        objects: std::sync::Arc<ObjectCache>,
        host_paths: HostPathPolicy,
        volumes_dir: PathBuf,
        node_name: String,
        host_ip: Option<String>,
    ) -> Self {
        NodeResolver {
            images,
            objects,
            host_paths,
            volumes_dir,
            node_name,
            host_ip,
            node_allocatable: BTreeMap::new(),
            prepared: Mutex::new(HashMap::new()),
        }
    }

    /// Removes a finished pod's volumes (tmpfs unmounted, files deleted).
    pub fn release(&self, sandbox_key: &str) -> crate::Result<()> {
        self.prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sandbox_key);
        let dir = self.volumes_dir.join(sandbox_key);
        if dir.exists() {
            volume::cleanup(&dir)?;
        }
        Ok(())
    }

    /// Rewrites the configMap and secret volumes of a running pod whose data changed.
    pub fn refresh(&self, pod: &Pod, sandbox_key: &str) -> crate::Result<bool> {
        let dir = self.volumes_dir.join(sandbox_key);
        if !dir.exists() {
            return Ok(false);
        }
        volume::refresh(pod, &dir, self.objects.as_ref())
    }

    fn volumes(&self, pod: &Pod, key: &str) -> crate::Result<Vec<Prepared>> {
        let mut map = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = map.get(key) {
            return Ok(p.clone());
        }
        let prepared = volume::prepare(
            pod,
            &self.volumes_dir.join(key),
            &self.host_paths,
            self.objects.as_ref(),
        )?;
        map.insert(key.to_owned(), prepared.clone());
        Ok(prepared)
    }

    fn resolve(
        &self,
        pod: &Pod,
        container: &Container,
        attempt: u32,
        sandbox: &Sandbox,
    ) -> crate::Result<ContainerSpec> {
        let field = env::container_field(pod, container);
        let (rootfs, config) = if container.image == "host" {
            (Rootfs::Host, Default::default())
        } else {
            let image = self.images.get(&container.image)?.ok_or_else(|| crate::Error::Config {
                field: format!("{field}.image"),
                reason: format!(
                    "image {:?} is not in the node's image store (import it with `coxswain image import`)",
                    container.image
                ),
            })?;
            (Rootfs::Image(image.rootfs), image.config)
        };
        let facts = PodFacts {
            pod_ip: sandbox.pod_ip.map(|ip| ip.to_string()).or_else(|| {
                // With the host's network the pod's IP is the node's, as in Kubernetes.
                sandbox.host_network.then(|| self.host_ip.clone()).flatten()
            }),
            host_ip: self.host_ip.clone(),
            node_name: self.node_name.clone(),
            service_account: None,
            node_allocatable: self.node_allocatable.clone(),
        };
        let env = env::container_env(pod, container, &config.env, &facts, self.objects.as_ref())?;
        let argv = env::argv(pod, container, &config, &env)?;
        let mounts = volume::container_mounts(pod, container, &self.volumes(pod, &sandbox.key)?)?
            .into_iter()
            .map(|m| BindMount {
                source: m.source,
                destination: m.destination,
                read_only: m.read_only,
            })
            .collect();
        let sc = container.security_context.as_ref();
        let psc = pod.spec.security_context.as_ref();
        let id = |v: Option<i64>, what: &str| -> crate::Result<Option<u32>> {
            v.map(|v| {
                u32::try_from(v).map_err(|_| crate::Error::Config {
                    field: format!("{field}.securityContext.{what}"),
                    reason: format!("{v} is not a valid id"),
                })
            })
            .transpose()
        };
        let image_user = config
            .user
            .as_deref()
            .and_then(|u| u.split(':').next())
            .and_then(|u| u.parse::<i64>().ok());
        let user = id(
            sc.and_then(|s| s.run_as_user)
                .or(psc.and_then(|s| s.run_as_user))
                .or(image_user),
            "runAsUser",
        )?;
        let group = id(
            sc.and_then(|s| s.run_as_group)
                .or(psc.and_then(|s| s.run_as_group)),
            "runAsGroup",
        )?;
        let run_as_non_root = sc
            .and_then(|s| s.run_as_non_root)
            .or(psc.and_then(|s| s.run_as_non_root))
            .unwrap_or(false);
        if run_as_non_root && user.unwrap_or(0) == 0 {
            return Err(crate::Error::Config {
                field: format!("{field}.securityContext.runAsNonRoot"),
                reason: "container has runAsNonRoot and image will run as root".to_owned(),
            });
        }
        let resources = container
            .resources
            .as_ref()
            .map(|r| Resources::from_k8s(r.requests.as_ref(), r.limits.as_ref()))
            .transpose()?
            .unwrap_or_default();
        let caps = sc.and_then(|s| s.capabilities.as_ref());
        Ok(ContainerSpec {
            name: container.name.clone(),
            attempt,
            rootfs,
            argv,
            env,
            working_dir: container.working_dir.clone().or(config.working_dir),
            user,
            group,
            mounts,
            resources,
            read_only_root_filesystem: sc
                .and_then(|s| s.read_only_root_filesystem)
                .unwrap_or(false),
            add_capabilities: caps.and_then(|c| c.add.clone()).unwrap_or_default(),
            drop_capabilities: caps.and_then(|c| c.drop.clone()).unwrap_or_default(),
        })
    }
}

impl Resolver for NodeResolver {
    fn container_spec(
        &self,
        pod: &Pod,
        container: &Container,
        _init: bool,
        attempt: u32,
        sandbox: &Sandbox,
    ) -> Result<ContainerSpec, String> {
        self.resolve(pod, container, attempt, sandbox)
            .map_err(|e| e.to_string())
    }
}
