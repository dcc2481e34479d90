# LemonLDAP::NG loads a captcha module at start even with every captcha disabled, and its
# default one needs GD::SecurityImage. The test provider shows no captcha: this one accepts.
package AccountServerTests::NoCaptcha;

use strict;
use Mouse;

extends 'Lemonldap::NG::Portal::Main::Plugin';

sub init { 1 }
sub init_captcha { }
sub check_captcha { 1 }

1;
