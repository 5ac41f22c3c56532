#!/usr/bin/env bash
# Says what this host offers the kvm accelerator; tests that need more skip with the same reason.
if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then echo "KVM: /dev/kvm available"; else echo "KVM: not available (no /dev/kvm)"; fi
if grep -qwE 'vmx|svm' /proc/cpuinfo; then
  echo "hardware KVM: available (VMX/SVM)"
else
  echo "hardware KVM: not available (no VMX/SVM; /dev/kvm, if present, is a software hypervisor such as PVM that cannot run stock Linux)"
fi
