# The KVM probe boot sector (see ../accel.rs), in GNU as syntax. Real mode ->
# protected mode -> long mode, a marker on COM1 at each step, then 2^26
# iterations of a register loop, then KILNKVM. ./make-probe.sh assembles it
# into probe.bin, which accel.rs compiles in (needs binutils).
.code16
  cli
  cld
  xor %ax,%ax
  mov %ax,%ds
  mov %ax,%es
  mov %ax,%ss
  mov $0x7c00,%sp
  mov $0x7c00+msg16,%si
  mov $0x3f8,%dx
1: lodsb
  test %al,%al
  jz 2f
  out %al,%dx
  jmp 1b
2:
  mov $0x1000,%di
  mov $0x1800,%cx
  xor %ax,%ax
  rep stosw
  movw $0x2003,0x1000
  movw $0x3003,0x2000
  movw $0x0083,0x3000
  lgdtl 0x7c00+gdtr
  mov %cr0,%eax
  or $1,%al
  mov %eax,%cr0
  ljmp $0x08,$0x7c00+pm32
.code32
pm32:
  mov $0x10,%ax
  mov %ax,%ds
  mov %ax,%es
  mov %ax,%ss
  mov $0x7c00+msg32,%esi
  mov $0x3f8,%edx
1: lodsb
  test %al,%al
  jz 2f
  out %al,%dx
  jmp 1b
2:
  mov %cr4,%eax
  or $0x20,%eax
  mov %eax,%cr4
  mov $0x1000,%eax
  mov %eax,%cr3
  mov $0xC0000080,%ecx
  rdmsr
  or $0x100,%eax
  wrmsr
  mov %cr0,%eax
  or $0x80000000,%eax
  mov %eax,%cr0
  ljmp $0x18,$0x7c00+lm64
.code64
lm64:
  mov $0x7c00+msg64,%esi
  mov $0x3f8,%edx
1: lodsb
  test %al,%al
  jz 2f
  out %al,%dx
  jmp 1b
2:
  mov $0x4000000,%ecx
3: dec %ecx
  jnz 3b
  mov $0x7c00+msgok,%esi
1: lodsb
  test %al,%al
  jz 2f
  out %al,%dx
  jmp 1b
2:
  hlt
  jmp 2b
.balign 8, 0
gdt:
  .quad 0
  .quad 0x00CF9A000000FFFF
  .quad 0x00CF92000000FFFF
  .quad 0x00AF9A000000FFFF
gdtr:
  .word 31
  .long 0x7c00+gdt
msg16: .asciz "KILN16 "
msg32: .asciz "KILN32 "
msg64: .asciz "KILN64 "
msgok: .asciz "KILNKVM\r\n"
.org 510
.byte 0x55,0xaa
