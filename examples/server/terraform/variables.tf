variable "region" {
  description = "AWS region (AWS_REGION / S3_REGION of the controller)"
  type        = string
}

variable "name" {
  description = "Prefix of every resource name; also a good BAKERY_OWNER"
  type        = string
  default     = "bakery"
  validation {
    condition     = can(regex("^[A-Za-z0-9_-]+$", var.name))
    error_message = "name becomes BAKERY_OWNER: letters, digits, _ and - only."
  }
}

variable "vpc_id" {
  description = "VPC the agents run in"
  type        = string
}

variable "subnet_ids" {
  description = "Subnets with a route to the internet (or a NAT gateway) for the agents (ECS_SUBNETS)"
  type        = list(string)
}

variable "context_bucket" {
  description = "S3 bucket for build contexts (S3_BUCKET)"
  type        = string
}

variable "context_retention_days" {
  description = "Contexts are content-addressed and re-uploaded only when they change; expire old ones after this many days"
  type        = number
  default     = 14
}

variable "agent_image_secret_arn" {
  description = "Secrets Manager ARN of the agent image registry login (AGENT_IMAGE_SECRET_ARN), or empty for a public image"
  type        = string
  default     = ""
}

variable "log_group" {
  description = "CloudWatch Logs group for the agents' own output (ECS_LOG_GROUP), or empty for none"
  type        = string
  default     = "/bakery/agents"
}

variable "assign_public_ip" {
  description = "Give agent tasks a public IP (ECS_ASSIGN_PUBLIC_IP): needed in public subnets without a NAT gateway, to reach S3, the controller and registries"
  type        = bool
  default     = false
}

variable "server_runs_on" {
  description = "Where bakery-controller runs, for its role's trust: ecs (an ECS task), eks-pod-identity, or irsa"
  type        = string
  default     = "ecs"
  validation {
    condition     = contains(["ecs", "eks-pod-identity", "irsa"], var.server_runs_on)
    error_message = "server_runs_on is ecs, eks-pod-identity or irsa."
  }
}

variable "irsa_oidc_provider_arn" {
  description = "With server_runs_on = irsa: the cluster's IAM OIDC provider ARN"
  type        = string
  default     = ""
  validation {
    condition     = var.server_runs_on != "irsa" || var.irsa_oidc_provider_arn != ""
    error_message = "server_runs_on = irsa needs irsa_oidc_provider_arn."
  }
}
