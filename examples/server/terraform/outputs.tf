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
