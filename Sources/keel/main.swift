import Glibc
import KeelImg
import KeelKit

let arguments = Array(CommandLine.arguments.dropFirst())
if arguments.first == "img" { exit(KeelImg.main(Array(arguments.dropFirst()))) }
if arguments.first == "vhost-user-net" { exit(VhostUserNetBackend.main(Array(arguments.dropFirst()))) }
if arguments.first == "vhost-user-scsi" { exit(VhostUserSCSIMain.main(Array(arguments.dropFirst()))) }
if arguments.first == "vhost-user-blk" { exit(VhostUserBlockBackend.main(Array(arguments.dropFirst()))) }
exit(KeelMain.main(arguments))
