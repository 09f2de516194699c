#!/usr/bin/env python3
"""`moto_server` answering UploadPart and CompleteMultipartUpload for an unknown upload as S3 does.

AWS answers both with 404 NoSuchUpload when the upload was aborted, completed or never existed;
moto (5.x) looks the upload up with `bucket.multiparts[upload_id]` and answers 500 (a KeyError),
which clients retry as a server fault. Resuming an export probes its upload with an UploadPart and
starts over on NoSuchUpload, so the tests need the AWS answer. Same arguments as `moto_server`.
"""

from moto.s3.exceptions import NoSuchUpload
from moto.s3.models import S3Backend
from moto.server import main


def _known(method):
    def wrapper(self, bucket_name, multipart_id, *args, **kwargs):
        if multipart_id not in self.get_bucket(bucket_name).multiparts:
            raise NoSuchUpload(upload_id=multipart_id)
        return method(self, bucket_name, multipart_id, *args, **kwargs)

    return wrapper


S3Backend.upload_part = _known(S3Backend.upload_part)
S3Backend.complete_multipart_upload = _known(S3Backend.complete_multipart_upload)

if __name__ == "__main__":
    main()
