# The controller's environment, ready to paste into its .env.

output "controller_env" {
  description = "Environment variables for bakery-controller"
  value = {
    AWS_REGION           = var.region
    S3_REGION            = var.region
    S3_BUCKET            = aws_s3_bucket.contexts.bucket
    ECS_CLUSTER          = aws_ecs_cluster.bakery.name
    ECS_SUBNETS          = join(",", var.subnet_ids)
    ECS_SECURITY_GROUPS  = aws_security_group.agents.id
    ECS_EXEC_ROLE_ARN    = aws_iam_role.agent_execution.arn
    ECS_TASK_ROLE_ARN    = aws_iam_role.agent_task.arn
    ECS_LOG_GROUP        = var.log_group
    ECS_ASSIGN_PUBLIC_IP = tostring(var.assign_public_ip)
    BAKERY_OWNER         = var.name
  }
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
