# fcwarm-server on every Nomad client (a system job), sharing one snapshot repository (S3 API) and one etcd, with
# a sidecar that publishes the node's ready runtime snapshots as dynamic node metadata
# (fcwarm.snapshot_ready.<image> = <compatibility key>) for placement. See docs/multi-host.md.
#
# NOT RUN HERE: Nomad is not installable on the machines this project is tested on. tests/cluster/test_deploy.py
# checks this file's structure (blocks, job type, driver, the server's flags) with a small HCL reader of its own;
# `nomad job validate deploy/nomad/fcwarm.nomad.hcl` is the real check on a machine with Nomad.
#
# Prerequisites on every client:
#   - fcwarm-server and fcwarm-node-labels installed (var.fcwarm_bin_dir), the guest artifacts in var.data_dir,
#     /dev/kvm, and the raw_exec driver enabled (plugin "raw_exec" { config { enabled = true } }): fcwarm-server
#     needs root for KVM, network namespaces, TAP devices and iptables, so it cannot run in an isolating driver.
#   - The secrets, in a Nomad variable the job can read (its workload identity reads nomad/jobs/fcwarm):
#       nomad var put nomad/jobs/fcwarm aws_access_key_id=... aws_secret_access_key=... \
#         auth_token="$(head -c 32 /dev/urandom | base64)" nomad_token=<ACL token with node:write>
#     nomad_token is only needed when ACLs are enabled (`nomad node meta apply` needs node:write).
#
# Run: nomad job run -var snapshot_repository=s3://BUCKET/PREFIX -var s3_endpoint=https://s3.example:443 \
#        -var coordination=etcd://etcd.example:2379 deploy/nomad/fcwarm.nomad.hcl

variable "snapshot_repository" {
  type        = string
  description = "Where snapshot generations are published and fetched: s3://BUCKET/PREFIX"
  default     = "s3://fcwarm-snapshots/snapshots"
}

variable "s3_endpoint" {
  type        = string
  description = "S3 API endpoint (path-style), e.g. a Ceph RADOS Gateway: http://rgw.example:7480"
  default     = "http://rgw.service.consul:7480"
}

variable "s3_region" {
  type        = string
  description = "Region for SigV4 signing (Ceph RGW: its zonegroup, usually default)"
  default     = "default"
}

variable "coordination" {
  type        = string
  description = "etcd for one build per compatibility key across the cluster: etcd://HOST:PORT"
  default     = "etcd://etcd.service.consul:2379"
}

variable "data_dir" {
  type        = string
  description = "fcwarm-server's state directory on each node (store, snapshots, VM work directories)"
  default     = "/var/lib/fcwarm"
}

variable "fcwarm_bin_dir" {
  type        = string
  description = "Where fcwarm-server and fcwarm-node-labels are installed on each node"
  default     = "/usr/local/bin"
}

job "fcwarm" {
  type        = "system"
  datacenters = ["*"]

  # KVM guests: x86_64 Linux clients only.
  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }

  constraint {
    attribute = "${attr.cpu.arch}"
    value     = "amd64"
  }

  update {
    max_parallel     = 1
    min_healthy_time = "30s"
    healthy_deadline = "5m"
  }

  group "fcwarm" {
    restart {
      attempts = 10
      interval = "30m"
      delay    = "15s"
      mode     = "delay"
    }

    task "server" {
      driver = "raw_exec"

      config {
        command = "${var.fcwarm_bin_dir}/fcwarm-server"
        args = [
          "--bind", "127.0.0.1:18080",
          "--data-dir", var.data_dir,
          "--backend", "qemu",
          "--auth-token-file", "${NOMAD_SECRETS_DIR}/token",
          "--snapshot-repository", var.snapshot_repository,
          "--s3-endpoint", var.s3_endpoint,
          "--s3-region", var.s3_region,
          "--coordination", var.coordination,
        ]
      }

      # S3 credentials as the standard AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY variables (env = true), and
      # the API token as a file; both from the Nomad variable, never in the job itself.
      template {
        destination = "${NOMAD_SECRETS_DIR}/s3.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/fcwarm" }}
          AWS_ACCESS_KEY_ID={{ .aws_access_key_id }}
          AWS_SECRET_ACCESS_KEY={{ .aws_secret_access_key }}
          {{ end }}
        EOT
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/token"
        perms       = "0600"
        change_mode = "restart"
        data        = "{{ with nomadVar \"nomad/jobs/fcwarm\" }}{{ .auth_token }}{{ end }}"
      }

      # SIGTERM: graceful shutdown (--shutdown-timeout, 30 s by default); VMs keep running and are re-adopted
      # by the next start.
      kill_signal  = "SIGTERM"
      kill_timeout = "60s"

      # raw_exec does not enforce these; the VMs' memory is the guests' (runtime image memory_mib) on top.
      resources {
        cpu    = 500
        memory = 256
      }
    }

    # Publishes this node's ready snapshots as node meta: fcwarm.snapshot_ready.<image> = <compatibility key>,
    # removing stale entries (and all of them when the server stops answering, or this task stops).
    task "node-meta" {
      driver = "raw_exec"

      lifecycle {
        hook    = "poststart"
        sidecar = true
      }

      config {
        command = "${var.fcwarm_bin_dir}/fcwarm-node-labels"
        args = [
          "--engine", "nomad",
          "--node", "${node.unique.id}",
          "--server", "http://127.0.0.1:18080",
          "--token-file", "${NOMAD_SECRETS_DIR}/token",
          "--interval", "10",
        ]
      }

      env {
        # The local client agent (nomad node meta apply talks to it).
        NOMAD_ADDR = "http://127.0.0.1:4646"
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/token"
        perms       = "0600"
        data        = "{{ with nomadVar \"nomad/jobs/fcwarm\" }}{{ .auth_token }}{{ end }}"
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/nomad.env"
        env         = true
        data        = "{{ with nomadVar \"nomad/jobs/fcwarm\" }}NOMAD_TOKEN={{ .nomad_token }}{{ end }}"
      }

      kill_timeout = "20s"

      resources {
        cpu    = 50
        memory = 64
      }
    }
  }
}
