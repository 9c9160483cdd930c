# The GPU node pool the pipeline's advgen, train and evaluate steps run on. Its label and taint are the
# ones the compiled pipeline selects and tolerates (medrobust.pipelines.dag: GPU_NODE_SELECTOR and
# GPU_TOLERATION; tests/test_infra.py checks that they agree). GKE installs the NVIDIA driver
# (gpu_driver_installation_config), so no driver DaemonSet is needed.
resource "google_container_node_pool" "gpu" {
  name           = "medrobust-gpu"
  project        = var.project_id
  location       = var.location
  cluster        = var.cluster_name
  node_locations = length(var.node_locations) > 0 ? var.node_locations : null

  autoscaling {
    min_node_count = var.min_nodes
    max_node_count = var.max_nodes
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  node_config {
    machine_type    = var.machine_type
    image_type      = "COS_CONTAINERD"
    disk_size_gb    = 200
    disk_type       = "pd-balanced"
    service_account = var.service_account
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]

    guest_accelerator {
      type  = var.accelerator_type
      count = var.accelerator_count
      gpu_driver_installation_config {
        gpu_driver_version = "LATEST"
      }
    }

    labels = {
      "medrobust.io/node-pool" = "gpu"
    }

    taint {
      key    = "nvidia.com/gpu"
      value  = "present"
      effect = "NO_SCHEDULE"
    }

    metadata = {
      "disable-legacy-endpoints" = "true"
    }

    workload_metadata_config {
      mode = "GKE_METADATA"
    }

    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
  }
}
