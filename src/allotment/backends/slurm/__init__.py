"""The Slurm backend: Slurm places and starts the work of its pools' partitions; Allotment
admits it on policy, submits it as each user, follows it, mirrors accounts and imports usage."""
