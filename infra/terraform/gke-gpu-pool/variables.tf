variable "project_id" {
  description = "The Google Cloud project of the cluster."
  type        = string
}

variable "location" {
  description = "The cluster's region or zone, e.g. europe-west4."
  type        = string
}

variable "cluster_name" {
  description = "The existing GKE cluster that runs Kubeflow Pipelines."
  type        = string
}

variable "node_locations" {
  description = "Zones of the location that offer the accelerator (empty: the cluster's)."
  type        = list(string)
  default     = []
}

variable "machine_type" {
  description = "The nodes' machine type: one that takes the accelerator (n1-standard-8 for T4 and V100, g2-standard-8 for L4)."
  type        = string
  default     = "g2-standard-8"
}

variable "accelerator_type" {
  description = "The GPU type: nvidia-l4, nvidia-tesla-t4, nvidia-tesla-a100..."
  type        = string
  default     = "nvidia-l4"
}

variable "accelerator_count" {
  description = "GPUs per node (each pipeline GPU step asks for one)."
  type        = number
  default     = 1
}

variable "min_nodes" {
  description = "Autoscaling floor per zone (0: no GPU node while no pipeline runs)."
  type        = number
  default     = 0
}

variable "max_nodes" {
  description = "Autoscaling ceiling per zone."
  type        = number
  default     = 4
}

variable "service_account" {
  description = "The nodes' Google service account (least privilege: logging, monitoring, image pulls)."
  type        = string
}
