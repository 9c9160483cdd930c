output "node_pool" {
  description = "The GPU node pool's name."
  value       = google_container_node_pool.gpu.name
}
