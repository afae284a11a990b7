terraform {
  required_version = ">= 1.5"
  required_providers {
    google = {
      source = "hashicorp/google"
      # Exactly the version .terraform.lock.hcl (committed) records hashes for; upgrading is a
      # reviewed change: `terraform init -upgrade` after editing this, then commit the new lock.
      version = "6.50.0"
    }
  }
}

provider "google" {
  project = var.project
  region  = var.region
}
