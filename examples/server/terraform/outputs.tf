# The controller's environment, ready to paste into its .env.

output "controller_env" {
  description = "Environment variables for bakery-controller"
  value       = local.controller_env
}

output "server_role_arn" {
  value = aws_iam_role.server.arn
}

output "client_policy_arn" {
  value = aws_iam_policy.client.arn
}

output "agent_pod_role_arn" {
  description = "For agent pods on EKS: the role the bakery-agent service account gets (IRSA annotation or Pod Identity association)"
  value       = var.server_runs_on == "ecs" ? null : aws_iam_role.agent_pod[0].arn
}

output "agent_image_secret_arn" {
  description = "AGENT_IMAGE_SECRET_ARN for the controller, when given"
  value       = var.agent_image_secret_arn
}

output "controller_url" {
  description = "With controller_on_ecs: the URL CI jobs (the action's and component's controller-url) and agents reach the controller at"
  value       = var.controller_on_ecs ? var.controller_url : null
}

output "controller_lb_dns_name" {
  description = "With controller_on_ecs: the load balancer's DNS name, for the controller_url's DNS record (CNAME or alias)"
  value       = one(aws_lb.controller[*].dns_name)
}
