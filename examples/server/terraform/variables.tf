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

variable "ecs_agents" {
  description = "Run build agents on ECS Fargate: the cluster, the agents' security group and roles, and the controller's ECS permissions. false for a Kubernetes-only setup (the bucket, and the agent pods' and controller's roles)"
  type        = bool
  default     = true
}

variable "vpc_id" {
  description = "VPC the agents (and, with controller_on_ecs, the controller) run in; not needed for a Kubernetes-only setup"
  type        = string
  default     = null
  validation {
    condition     = var.vpc_id != null || !(var.ecs_agents || var.controller_on_ecs)
    error_message = "vpc_id is needed when ecs_agents or controller_on_ecs is true."
  }
}

variable "subnet_ids" {
  description = "Subnets with a route to the internet (or a NAT gateway) for the agents (ECS_SUBNETS) and the controller; not needed for a Kubernetes-only setup"
  type        = list(string)
  default     = []
  validation {
    condition     = length(var.subnet_ids) > 0 || !(var.ecs_agents || var.controller_on_ecs)
    error_message = "subnet_ids is needed when ecs_agents or controller_on_ecs is true."
  }
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

# ---- the controller as an ECS service (controller.tf) ----------------------

variable "controller_on_ecs" {
  description = "Run bakery-controller itself as an ECS Fargate service behind an HTTPS load balancer, its DATA_DIR on EFS"
  type        = bool
  default     = false
  validation {
    # Load balancer and target group names: letters, digits and hyphens,
    # 32 at most, with "-controller" appended.
    condition     = !var.controller_on_ecs || can(regex("^[A-Za-z0-9-]{1,21}$", var.name))
    error_message = "controller_on_ecs needs a name of at most 21 letters, digits and hyphens (it names the load balancer)."
  }
  validation {
    condition     = !var.controller_on_ecs || (var.server_runs_on == "ecs" && var.ecs_agents)
    error_message = "controller_on_ecs needs server_runs_on = ecs (the controller's role is its task role) and ecs_agents (it runs in the agents' cluster)."
  }
}

variable "controller_image" {
  description = "With controller_on_ecs: the bakery-controller image"
  type        = string
  default     = ""
  validation {
    condition     = !var.controller_on_ecs || var.controller_image != ""
    error_message = "controller_on_ecs needs controller_image."
  }
}

variable "controller_arch" {
  description = "With controller_on_ecs: the controller task's CPU architecture (X86_64 or ARM64; the image is multi-arch)"
  type        = string
  default     = "ARM64"
  validation {
    condition     = contains(["X86_64", "ARM64"], var.controller_arch)
    error_message = "controller_arch is X86_64 or ARM64."
  }
}

variable "certificate_arn" {
  description = "With controller_on_ecs: the ACM certificate of the load balancer's HTTPS listener (the controller's public name)"
  type        = string
  default     = ""
  validation {
    condition     = !var.controller_on_ecs || var.certificate_arn != ""
    error_message = "controller_on_ecs needs certificate_arn: CI jobs send tokens, so the listener is HTTPS only."
  }
}

variable "controller_url" {
  description = "With controller_on_ecs: the https:// URL CI jobs and agents reach the controller at: the certificate's name, a DNS record pointing at the load balancer (output controller_lb_dns_name)"
  type        = string
  default     = ""
  validation {
    condition     = !var.controller_on_ecs || startswith(var.controller_url, "https://")
    error_message = "controller_on_ecs needs controller_url, https://<the certificate's name>: agents and CI jobs verify the certificate against it."
  }
}

variable "lb_subnet_ids" {
  description = "With controller_on_ecs: the load balancer's subnets, in two availability zones at least (public ones for CI runners outside the VPC); empty: subnet_ids"
  type        = list(string)
  default     = []
  validation {
    condition     = !var.controller_on_ecs || length(var.lb_subnet_ids) >= 2 || length(var.subnet_ids) >= 2
    error_message = "An application load balancer needs subnets in two availability zones: give lb_subnet_ids (or subnet_ids) two or more."
  }
}

variable "lb_internal" {
  description = "With controller_on_ecs: an internal load balancer (CI runners inside the VPC or peered)"
  type        = bool
  default     = false
}

variable "client_cidrs" {
  description = "With controller_on_ecs: the addresses CI jobs reach the load balancer from. GitHub- and GitLab-hosted runners have no fixed range: the controller authenticates every call (OIDC or CONTROLLER_TOKEN). With an internet-facing load balancer, agents arrive from their NAT gateway's address: keep it in the list"
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "controller_environment" {
  description = "With controller_on_ecs: more of the controller's environment (AGENT_IMAGE, OIDC_ISSUERS, OIDC_ALLOW…); the ECS, S3 and network settings are set from this module"
  type        = map(string)
  default     = {}
  validation {
    condition     = !contains(keys(var.controller_environment), "BAKERY_OWNER")
    error_message = "BAKERY_OWNER is the variable name: the IAM policies are scoped to it."
  }
}

variable "controller_secrets" {
  description = "With controller_on_ecs: environment variables read from Secrets Manager or SSM Parameter Store (name => secret or parameter ARN), e.g. CONTROLLER_TOKEN: never in the task definition"
  type        = map(string)
  default     = {}
}
