/*
 * kvm-smoke: prove that /dev/kvm really runs guest code.
 *
 * Opens /dev/kvm, checks KVM_GET_API_VERSION, creates a VM with one vCPU and
 * 4 KiB of guest memory, and runs this real-mode code at 0x1000:
 *
 *     mov dx, 0x3f8 ; add al, bl ; add al, '0' ; out dx, al
 *     mov al, '\n' ; out dx, al ; hlt
 *
 * with al=2, bl=3: the guest writes "5\n" to port 0x3f8, then halts.
 * Prints what it saw and "KVM-SMOKE OK" (exit 0) or "KVM-SMOKE FAIL ..." (exit 1).
 * Build: gcc -O2 -static -o kvm-smoke kvm-smoke.c
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

static void fail(const char *what)
{
	printf("KVM-SMOKE FAIL %s: %s\n", what, strerror(errno));
	exit(1);
}

int main(void)
{
	static const uint8_t code[] = {
		0xba, 0xf8, 0x03, /* mov $0x3f8, %dx */
		0x00, 0xd8,       /* add %bl, %al */
		0x04, '0',        /* add $'0', %al */
		0xee,             /* out %al, (%dx) */
		0xb0, '\n',       /* mov $'\n', %al */
		0xee,             /* out %al, (%dx) */
		0xf4,             /* hlt */
	};
	char out[16];
	size_t nout = 0;
	int kvm, vm, vcpu, api, mmap_size, exits = 0;
	struct kvm_run *run;
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	uint8_t *mem;

	setvbuf(stdout, NULL, _IONBF, 0);
	kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		fail("open /dev/kvm");
	api = ioctl(kvm, KVM_GET_API_VERSION, NULL);
	printf("KVM_GET_API_VERSION = %d\n", api);
	if (api != KVM_API_VERSION) {
		errno = EINVAL;
		fail("unexpected API version");
	}
	vm = ioctl(kvm, KVM_CREATE_VM, 0UL);
	if (vm < 0)
		fail("KVM_CREATE_VM");

	mem = mmap(NULL, 0x1000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		fail("mmap guest memory");
	memcpy(mem, code, sizeof(code));
	struct kvm_userspace_memory_region region = {
		.slot = 0,
		.guest_phys_addr = 0x1000,
		.memory_size = 0x1000,
		.userspace_addr = (uintptr_t)mem,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		fail("KVM_SET_USER_MEMORY_REGION");

	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0UL);
	if (vcpu < 0)
		fail("KVM_CREATE_VCPU");
	mmap_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, NULL);
	if (mmap_size < (int)sizeof(*run))
		fail("KVM_GET_VCPU_MMAP_SIZE");
	run = mmap(NULL, (size_t)mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		fail("mmap kvm_run");

	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		fail("KVM_GET_SREGS");
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
		fail("KVM_SET_SREGS");
	memset(&regs, 0, sizeof(regs));
	regs.rip = 0x1000;
	regs.rax = 2;
	regs.rbx = 3;
	regs.rflags = 0x2;
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		fail("KVM_SET_REGS");

	for (;;) {
		if (ioctl(vcpu, KVM_RUN, NULL) < 0)
			fail("KVM_RUN");
		exits++;
		switch (run->exit_reason) {
		case KVM_EXIT_IO:
			if (run->io.direction == KVM_EXIT_IO_OUT && run->io.size == 1 &&
			    run->io.port == 0x3f8 && run->io.count == 1 && nout < sizeof(out) - 1) {
				out[nout++] = *((char *)run + run->io.data_offset);
			} else {
				printf("KVM-SMOKE FAIL unexpected io: port 0x%x size %u dir %u\n",
				       run->io.port, run->io.size, run->io.direction);
				return 1;
			}
			break;
		case KVM_EXIT_HLT:
			out[nout] = 0;
			if (ioctl(vcpu, KVM_GET_REGS, &regs) < 0)
				fail("KVM_GET_REGS");
			printf("guest wrote \"%.*s\" to port 0x3f8 and halted at rip=0x%llx after %d exits\n",
			       (int)(nout ? nout - 1 : 0), out, (unsigned long long)regs.rip, exits);
			if (strcmp(out, "5\n") != 0) {
				printf("KVM-SMOKE FAIL expected \"5\\n\"\n");
				return 1;
			}
			printf("KVM-SMOKE OK\n");
			return 0;
		case KVM_EXIT_FAIL_ENTRY:
			printf("KVM-SMOKE FAIL KVM_EXIT_FAIL_ENTRY reason 0x%llx\n",
			       (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
			return 1;
		case KVM_EXIT_INTERNAL_ERROR:
			printf("KVM-SMOKE FAIL KVM_EXIT_INTERNAL_ERROR suberror 0x%x\n",
			       run->internal.suberror);
			return 1;
		default:
			printf("KVM-SMOKE FAIL exit_reason %u\n", run->exit_reason);
			return 1;
		}
	}
}
